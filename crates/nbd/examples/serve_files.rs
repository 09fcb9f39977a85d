//! Serves regular files over NBD until Ctrl-C, for manual testing and benchmarks (logs go to
//! stderr, filtered by `RUST_LOG`, e.g. `RUST_LOG=tandem_nbd=debug`):
//!
//! ```sh
//! cargo run --release -p tandem-nbd --example serve_files -- 127.0.0.1:10809 disk=/tmp/disk.img [ro=/tmp/ro.img:ro]
//! fio --name=t --ioengine=nbd --uri=nbd://127.0.0.1:10809/disk --rw=randwrite --bs=4k --iodepth=16 --size=64m
//! ```

use std::sync::Arc;

use tandem_block::FileDevice;
use tandem_nbd::{Server, ServerConfig};
use tokio::net::TcpListener;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let mut args = std::env::args().skip(1);
    let usage = "usage: serve_files ADDR NAME=PATH[:ro]...";
    let addr = args.next().ok_or(usage)?;
    let server = Arc::new(Server::new(ServerConfig::default()));
    for spec in args {
        let (name, path) = spec.split_once('=').ok_or(usage)?;
        let (path, read_only) = match path.strip_suffix(":ro") {
            Some(path) => (path, true),
            None => (path, false),
        };
        let device = FileDevice::open(path, read_only)?;
        println!(
            "export {name}: {path} ({} bytes{})",
            device.size(),
            if read_only { ", read-only" } else { "" }
        );
        server.add_export(name, Arc::new(device))?;
    }
    let listener = TcpListener::bind(&addr).await?;
    println!("serving on {}", listener.local_addr()?);
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    server.serve(listener, shutdown).await;
    Ok(())
}
