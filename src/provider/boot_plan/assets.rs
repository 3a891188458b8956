//! `GET /assets/<name>`: the local boot assets (`--use-local-boot-assets`) of air-gapped
//! sites, as the Go provider serves `--boot-assets-path`: the agent's kernel and initramfs
//! for each architecture, streamed from disk (they are large: nothing is held in memory).
//!
//! Only the six asset names (`kernel-<arch>`, `initramfs-metal-<arch>.xz`,
//! `cmdline-metal-<arch>` for amd64 and arm64) are served; any other name is a 404, so no
//! path from a request ever reaches the file system.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::warn;

use crate::boot::http::sendfile::{ImageFile, Resolved};

/// Names of the boot asset files of `arch`, as the Go provider's.
pub(crate) fn boot_asset_names(arch: &str) -> [String; 3] {
    [
        format!("kernel-{arch}"),
        format!("initramfs-metal-{arch}.xz"),
        format!("cmdline-metal-{arch}"),
    ]
}

/// The asset directory and the names served from it.
#[derive(Debug)]
pub(crate) struct LocalAssets {
    dir: PathBuf,
    names: Vec<String>,
}

impl LocalAssets {
    /// Serve the assets of `dir`.
    pub(crate) fn new(dir: PathBuf) -> Arc<Self> {
        let names = ["amd64", "arm64"]
            .iter()
            .flat_map(|arch| boot_asset_names(arch))
            .collect();
        Arc::new(Self { dir, names })
    }

    async fn serve(&self, name: &str) -> Response {
        let plain = |status: StatusCode, msg: String| {
            (
                status,
                [(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                )],
                msg,
            )
                .into_response()
        };
        if !self.names.iter().any(|n| n == name) {
            return plain(StatusCode::NOT_FOUND, "no such boot asset\n".to_owned());
        }
        let path = self.dir.join(name);
        let file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return plain(
                    StatusCode::NOT_FOUND,
                    format!("boot asset {name} is absent\n"),
                );
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "boot asset unreadable");
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("boot asset {name} is unreadable\n"),
                );
            }
        };
        let len = match file.metadata().await {
            Ok(m) => m.len(),
            Err(e) => {
                warn!(path = %path.display(), error = %e, "boot asset unreadable");
                return plain(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    format!("boot asset {name} is unreadable\n"),
                );
            }
        };
        crate::boot::assets::send_file(file.into_std().await, len)
    }

    /// `path` (`/assets/<name>`) for the zero-copy image path: the asset's open file;
    /// anything else (another name, an absent or unreadable file) is left to the route's
    /// handler, which answers it.
    pub(crate) async fn image_for_sendfile(&self, path: &str) -> Resolved {
        let Some(name) = path.strip_prefix("/assets/") else {
            return Resolved::NotMine;
        };
        if !self.names.iter().any(|n| n == name) {
            return Resolved::NotMine;
        }
        let path = self.dir.join(name);
        let opened = tokio::task::spawn_blocking(move || std::fs::File::open(path)).await;
        match opened {
            Ok(Ok(file)) => Resolved::File(ImageFile {
                file: Arc::new(file),
                len: None,
                follow: None,
                sent: None,
            }),
            _ => Resolved::NotMine,
        }
    }

    /// Add `GET /assets/<name>` to `router`.
    pub(crate) fn mount(self: &Arc<Self>, router: Router) -> Router {
        let me = self.clone();
        router.route(
            "/assets/{name}",
            get(move |Path(name): Path<String>| async move { me.serve(&name).await }),
        )
    }
}
