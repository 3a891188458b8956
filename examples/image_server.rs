//! `benches/image_compare.sh`'s server: ironboot's accept loop serving a directory of
//! local boot assets on `/assets/<name>`.
//!
//! Usage: `image_server ADDR:PORT DIR [zero-copy|hyper]` (default `zero-copy`).

use std::path::PathBuf;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: image_server ADDR:PORT DIR [zero-copy|hyper]";
    let addr = args.next().ok_or(usage)?;
    let dir = PathBuf::from(args.next().ok_or(usage)?);
    let zero_copy = match args.next().as_deref() {
        None | Some("zero-copy") => true,
        Some("hyper") => false,
        Some(_) => return Err(usage.into()),
    };
    let listener = tokio::net::TcpListener::bind(&addr).await?;
    eprintln!(
        "image_server: {addr}, {}, zero_copy={zero_copy}",
        dir.display()
    );
    ironboot::bench_api::serve_assets(listener, &dir, zero_copy, 100_000).await?;
    Ok(())
}
