// The grpc.examples.echo.Echo service, described by hand.
//
// Debian ships no generated code for grpc-go's echo example, but
// EchoRequest and EchoResponse are both `string message = 1`, which is
// exactly the wire form of google.protobuf.StringValue: the wrapper type
// stands in for both messages and the service description is written here.

package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	wrappers "google.golang.org/protobuf/types/known/wrapperspb"
)

const echoService = "grpc.examples.echo.Echo"

// Full method names, as grpc-go's generated code would spell them.
const (
	methodUnary        = "/" + echoService + "/UnaryEcho"
	methodServerStream = "/" + echoService + "/ServerStreamingEcho"
	methodClientStream = "/" + echoService + "/ClientStreamingEcho"
	methodBidi         = "/" + echoService + "/BidirectionalStreamingEcho"
)

// echoServer answers like echo-server: "<message> (from <id>)".
type echoServer struct {
	id string
	// delay comes before every UnaryEcho reply (--delay); a call's
	// "x-delay" metadata (a Go duration) overrides it for that call.
	delay time.Duration
}

// wait holds a UnaryEcho call for its delay; a cancelled call stops waiting.
func (s *echoServer) wait(ctx context.Context) error {
	d := s.delay
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		if v := md.Get("x-delay"); len(v) > 0 {
			parsed, err := time.ParseDuration(v[0])
			if err != nil || parsed < 0 {
				return status.Errorf(codes.InvalidArgument, "x-delay %q: not a duration like 1.5s", v[0])
			}
			d = parsed
		}
	}
	if d <= 0 {
		return nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return status.FromContextError(ctx.Err()).Err()
	}
}

func (s *echoServer) reply(message string) *wrappers.StringValue {
	return &wrappers.StringValue{Value: fmt.Sprintf("%s (from %s)", message, s.id)}
}

func unaryHandler(srv interface{}, ctx context.Context, dec func(interface{}) error, interceptor grpc.UnaryServerInterceptor) (interface{}, error) {
	req := new(wrappers.StringValue)
	if err := dec(req); err != nil {
		return nil, err
	}
	s := srv.(*echoServer)
	if err := s.wait(ctx); err != nil {
		return nil, err
	}
	if interceptor == nil {
		return s.reply(req.Value), nil
	}
	info := &grpc.UnaryServerInfo{Server: srv, FullMethod: methodUnary}
	return interceptor(ctx, req, info, func(ctx context.Context, req interface{}) (interface{}, error) {
		return s.reply(req.(*wrappers.StringValue).Value), nil
	})
}

// ServerStreamingEcho: one reply to the one request, like echo-server.
func serverStreamHandler(srv interface{}, stream grpc.ServerStream) error {
	req := new(wrappers.StringValue)
	if err := stream.RecvMsg(req); err != nil {
		return err
	}
	return stream.SendMsg(srv.(*echoServer).reply(req.Value))
}

// ClientStreamingEcho: one reply to the last message received.
func clientStreamHandler(srv interface{}, stream grpc.ServerStream) error {
	last := ""
	for {
		req := new(wrappers.StringValue)
		err := stream.RecvMsg(req)
		if err == io.EOF {
			return stream.SendMsg(srv.(*echoServer).reply(last))
		}
		if err != nil {
			return err
		}
		last = req.Value
	}
}

// BidirectionalStreamingEcho: one reply per message, as they arrive.
func bidiHandler(srv interface{}, stream grpc.ServerStream) error {
	for {
		req := new(wrappers.StringValue)
		err := stream.RecvMsg(req)
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.SendMsg(srv.(*echoServer).reply(req.Value)); err != nil {
			return err
		}
	}
}

// echoServiceDesc is what protoc-gen-go-grpc would generate for echo.proto.
var echoServiceDesc = grpc.ServiceDesc{
	ServiceName: echoService,
	HandlerType: (*interface{})(nil),
	Methods: []grpc.MethodDesc{
		{MethodName: "UnaryEcho", Handler: unaryHandler},
	},
	Streams: []grpc.StreamDesc{
		{StreamName: "ServerStreamingEcho", Handler: serverStreamHandler, ServerStreams: true},
		{StreamName: "ClientStreamingEcho", Handler: clientStreamHandler, ClientStreams: true},
		{StreamName: "BidirectionalStreamingEcho", Handler: bidiHandler, ServerStreams: true, ClientStreams: true},
	},
	Metadata: "echo.proto",
}

// unaryEcho calls UnaryEcho and returns the reply's message.
func unaryEcho(ctx context.Context, cc *grpc.ClientConn, message string) (string, error) {
	resp := new(wrappers.StringValue)
	if err := cc.Invoke(ctx, methodUnary, &wrappers.StringValue{Value: message}, resp); err != nil {
		return "", err
	}
	return resp.Value, nil
}

// serverStreamingEcho sends one request and collects every reply.
func serverStreamingEcho(ctx context.Context, cc *grpc.ClientConn, message string) ([]string, error) {
	desc := &grpc.StreamDesc{StreamName: "ServerStreamingEcho", ServerStreams: true}
	stream, err := cc.NewStream(ctx, desc, methodServerStream)
	if err != nil {
		return nil, err
	}
	if err := stream.SendMsg(&wrappers.StringValue{Value: message}); err != nil {
		return nil, err
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	return recvAll(stream)
}

// clientStreamingEcho sends every message, then returns the one reply.
func clientStreamingEcho(ctx context.Context, cc *grpc.ClientConn, messages []string) (string, error) {
	desc := &grpc.StreamDesc{StreamName: "ClientStreamingEcho", ClientStreams: true}
	stream, err := cc.NewStream(ctx, desc, methodClientStream)
	if err != nil {
		return "", err
	}
	for _, m := range messages {
		if err := stream.SendMsg(&wrappers.StringValue{Value: m}); err != nil {
			return "", err
		}
	}
	if err := stream.CloseSend(); err != nil {
		return "", err
	}
	resp := new(wrappers.StringValue)
	if err := stream.RecvMsg(resp); err != nil {
		return "", err
	}
	return resp.Value, nil
}

// bidiEcho sends each message and waits for its reply before the next.
func bidiEcho(ctx context.Context, cc *grpc.ClientConn, messages []string) ([]string, error) {
	desc := &grpc.StreamDesc{StreamName: "BidirectionalStreamingEcho", ServerStreams: true, ClientStreams: true}
	stream, err := cc.NewStream(ctx, desc, methodBidi)
	if err != nil {
		return nil, err
	}
	var replies []string
	for _, m := range messages {
		if err := stream.SendMsg(&wrappers.StringValue{Value: m}); err != nil {
			return nil, err
		}
		resp := new(wrappers.StringValue)
		if err := stream.RecvMsg(resp); err != nil {
			return nil, err
		}
		replies = append(replies, resp.Value)
	}
	if err := stream.CloseSend(); err != nil {
		return nil, err
	}
	rest, err := recvAll(stream)
	return append(replies, rest...), err
}

func recvAll(stream grpc.ClientStream) ([]string, error) {
	var replies []string
	for {
		resp := new(wrappers.StringValue)
		err := stream.RecvMsg(resp)
		if err == io.EOF {
			return replies, nil
		}
		if err != nil {
			return nil, err
		}
		replies = append(replies, resp.Value)
	}
}
