//! Two registered servers and a balanced client with one sticky call, in one
//! program, built only on the `etcdlb` facade and tonic: what a user writes.
//! Reads `ETCD_ENDPOINTS` (comma list; default `http://127.0.0.1:2379`);
//! exits 0 when every check passed.

use std::sync::atomic::{AtomicU64, Ordering};

use etcdlb::client::{Balancer, Fallback, Resolver};
use etcdlb::prelude::*;
use etcdlb::server::{Registration, Server};
use tonic::{Request, Response, Status, server::NamedService};

pub mod inventory {
    tonic::include_proto!("inventory.v1");
}
use inventory::{
    AddReply, AddRequest,
    inventory_client::InventoryClient,
    inventory_server::{Inventory, InventoryServer},
};

struct Store {
    id: String,
    count: AtomicU64,
}

#[tonic::async_trait]
impl Inventory for Store {
    async fn add(&self, _: Request<AddRequest>) -> Result<Response<AddReply>, Status> {
        let count = self.count.fetch_add(1, Ordering::Relaxed) + 1;
        Ok(Response::new(AddReply { instance: self.id.clone(), count }))
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    etcdlb::init_logging();
    // One etcd configuration for both sides: ETCD_ENDPOINTS, else etcdctl's default.
    let etcd = etcdlb::EtcdConfig::from_env();
    let prefix = format!("discovery/outside-{}/inventory", std::process::id());

    // Two servers, each registered under <prefix>/<its address>.
    let mut stops = Vec::new();
    let mut servers = Vec::new();
    for id in ["a", "b"] {
        let registration = Registration::new(prefix.as_str(), "")
            .etcd(&etcd)
            .instance_id(id);
        let store = Store { id: id.into(), count: AtomicU64::new(0) };
        let router = tonic::transport::Server::builder().add_service(InventoryServer::new(store));
        let bound = Server::new(registration)
            .health_for(InventoryServer::<Store>::NAME)
            .bind("127.0.0.1:0".parse()?)
            .await?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        stops.push(stop);
        servers.push(tokio::spawn(bound.serve(router, async {
            let _ = stopped.await;
        })));
    }

    // A client: etcd → resolver → balancer → the generated client.
    let changes = Resolver::builder(prefix.as_str())
        .etcd(&etcd)
        .connect()
        .await?
        .resolve();
    let balancer = Balancer::builder().name(prefix.as_str()).fallback(Fallback::Fail).build(changes);
    balancer.wait_for_ready(2).await;
    let mut client = InventoryClient::new(balancer);
    let add = || AddRequest { item: "sword".into() };

    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..4 {
        seen.insert(client.add(add()).await?.into_inner().instance);
    }
    println!("round robin reached {seen:?}");
    assert_eq!(seen.len(), 2, "round robin reaches both servers");

    let reply = client.add(Request::new(add()).sticky("b")).await?;
    let served = reply.served_by().and_then(|s| s.instance_id()).map(str::to_owned);
    let reply = reply.into_inner();
    println!("sticky to b: served by {served:?}, b holds {}", reply.count);
    assert_eq!((reply.instance.as_str(), served.as_deref()), ("b", Some("b")));

    let missing = client.add(Request::new(add()).sticky("nobody")).await;
    let code = missing.as_ref().map_err(Status::code).err();
    println!("sticky to a missing instance with Fallback::Fail: {code:?}");
    assert_eq!(code, Some(tonic::Code::Unavailable));

    for stop in stops {
        let _ = stop.send(());
    }
    for server in servers {
        server.await??;
    }
    println!("outside project: ok");
    Ok(())
}
