//! A pod's controller, as the node knows it: the pod's labels, from a
//! read-only `ListPodSandbox` on the CRI socket of the containerd that runs
//! it (k8s.io/cri-api, `runtime.v1`).
//!
//! ownerReferences never reach the node; the labels that controllers stamp
//! on their pods do (`pod-template-hash` from a ReplicaSet,
//! `controller-revision-hash` from a StatefulSet or a DaemonSet), because
//! kubelet copies the pod's labels into its sandbox config. Nothing is
//! guessed from the pod's name.
//!
//! The messages are declared here by hand (the fields portwatch reads, with
//! the field numbers of cri-api's `pkg/apis/runtime/v1/api.proto`), so that
//! no protoc is needed; [`call`] sends any of them over a Unix socket, and
//! the test suite uses it to drive containerd as kubelet does.

use std::{
    collections::HashMap,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// How long a lookup may wait for the CRI socket: a stalled containerd
/// must not stall the answer, which then comes without the controller.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_millis(500);

/// The CRI's runtime service, as gRPC paths name it.
const SERVICE: &str = "/runtime.v1.RuntimeService/";

/// `PodSandboxMetadata` (api.proto): who the sandbox is for.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxMetadata {
    /// The pod's name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// The pod's UID.
    #[prost(string, tag = "2")]
    pub uid: String,
    /// The pod's namespace.
    #[prost(string, tag = "3")]
    pub namespace: String,
    /// How many sandboxes the pod had before this one.
    #[prost(uint32, tag = "4")]
    pub attempt: u32,
}

/// `PodSandboxFilter` (api.proto): one sandbox by id, or by labels.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandboxFilter {
    /// The sandbox's id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Labels a sandbox must carry.
    #[prost(map = "string, string", tag = "3")]
    pub label_selector: HashMap<String, String>,
}

/// `ListPodSandboxRequest` (api.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxRequest {
    /// Which sandboxes.
    #[prost(message, optional, tag = "1")]
    pub filter: Option<PodSandboxFilter>,
}

/// `ListPodSandboxResponse` (api.proto).
#[derive(Clone, PartialEq, prost::Message)]
pub struct ListPodSandboxResponse {
    /// The sandboxes that matched.
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<PodSandbox>,
}

/// `PodSandbox` (api.proto), the fields portwatch reads.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PodSandbox {
    /// The sandbox's id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// Its pod.
    #[prost(message, optional, tag = "2")]
    pub metadata: Option<PodSandboxMetadata>,
    /// The pod's labels, and kubelet's `io.kubernetes.pod.*`.
    #[prost(map = "string, string", tag = "5")]
    pub labels: HashMap<String, String>,
    /// The pod's annotations.
    #[prost(map = "string, string", tag = "6")]
    pub annotations: HashMap<String, String>,
}

/// What went wrong talking to a CRI socket.
#[derive(Debug, thiserror::Error)]
#[error("CRI {method} on {socket}: {what}")]
pub struct CriError {
    method: &'static str,
    socket: String,
    what: String,
}

/// Calls `method` of the CRI runtime service on `socket` with `request`,
/// within `timeout`. Runs on a thread of its own with its own runtime, so
/// that callers inside or outside an async runtime can wait for it.
pub fn call<Q, R>(
    socket: &Path,
    method: &'static str,
    request: Q,
    timeout: Duration,
) -> Result<R, CriError>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let error = |what: String| CriError {
        method,
        socket: socket.display().to_string(),
        what,
    };
    let path = socket.to_owned();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("portwatch-cri".into())
        .spawn(move || {
            let answer = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
                .and_then(|rt| {
                    rt.block_on(async {
                        tokio::time::timeout(timeout, unary(path, method, request))
                            .await
                            .unwrap_or_else(|_| Err(format!("no answer within {timeout:?}")))
                    })
                });
            let _ = tx.send(answer);
        })
        .map_err(|e| error(e.to_string()))?;
    rx.recv_timeout(timeout + Duration::from_millis(200))
        .map_err(|_| error(format!("no answer within {timeout:?}")))?
        .map_err(error)
}

/// One unary gRPC call over a Unix socket (the URI only fills the
/// request's `:authority`; the connector ignores it).
async fn unary<Q, R>(socket: PathBuf, method: &'static str, request: Q) -> Result<R, String>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    let channel = tonic::transport::Endpoint::from_static("http://localhost")
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let socket = socket.clone();
            async move {
                let stream = tokio::net::UnixStream::connect(socket).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        }))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| e.to_string())?;
    let path = http::uri::PathAndQuery::try_from(format!("{SERVICE}{method}"))
        .map_err(|e| e.to_string())?;
    let codec = tonic_prost::ProstCodec::<Q, R>::default();
    grpc.unary(tonic::Request::new(request), path, codec)
        .await
        .map(tonic::Response::into_inner)
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

/// What made a pod, as its labels tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Controller {
    /// `pod-template-hash`: a ReplicaSet's pod, most often a Deployment's.
    Replicaset,
    /// `controller-revision-hash` and `statefulset.kubernetes.io/pod-name`.
    Statefulset,
    /// `controller-revision-hash` alone: a DaemonSet's, or a StatefulSet's
    /// from before the pod-name label.
    DaemonsetOrStatefulset,
    /// None of those labels: a Job's, a bare pod's, another controller's.
    Unknown,
}

impl Controller {
    /// The controller that the labels of a pod name.
    pub fn from_labels(labels: &HashMap<String, String>) -> Self {
        let has = |k: &str| labels.contains_key(k);
        if has("pod-template-hash") {
            Controller::Replicaset
        } else if has("controller-revision-hash") {
            if has("statefulset.kubernetes.io/pod-name") {
                Controller::Statefulset
            } else {
                Controller::DaemonsetOrStatefulset
            }
        } else {
            Controller::Unknown
        }
    }

    /// How a fix names it: "its StatefulSet".
    pub fn phrase(self) -> &'static str {
        match self {
            Controller::Replicaset => "its ReplicaSet/Deployment",
            Controller::Statefulset => "its StatefulSet",
            Controller::DaemonsetOrStatefulset => "its DaemonSet or StatefulSet",
            Controller::Unknown => "its controller",
        }
    }
}

/// The controller of pod sandbox `sandbox`, from its labels on CRI socket
/// `socket`; `None` when the socket is not root's or does not answer in
/// time, or has no such sandbox.
pub fn controller(socket: &Path, sandbox: &str) -> Option<Controller> {
    // Only a socket root made: another user's could answer anything.
    let meta = std::fs::symlink_metadata(socket).ok()?;
    if !meta.file_type().is_socket() || meta.uid() != 0 {
        return None;
    }
    let request = ListPodSandboxRequest {
        filter: Some(PodSandboxFilter {
            id: sandbox.to_owned(),
            ..Default::default()
        }),
    };
    let answer: ListPodSandboxResponse =
        call(socket, "ListPodSandbox", request, LOOKUP_TIMEOUT).ok()?;
    let pod = answer.items.into_iter().find(|s| s.id == sandbox)?;
    Some(Controller::from_labels(&pod.labels))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(keys: &[&str]) -> HashMap<String, String> {
        keys.iter()
            .map(|&k| (k.to_owned(), "x".to_owned()))
            .collect()
    }

    /// Each controller's labels, and none guessed from the name.
    #[test]
    fn the_labels_name_the_controller() {
        let of = |keys: &[&str]| Controller::from_labels(&labels(keys));
        assert_eq!(of(&["app", "pod-template-hash"]), Controller::Replicaset);
        assert_eq!(
            of(&[
                "controller-revision-hash",
                "statefulset.kubernetes.io/pod-name"
            ]),
            Controller::Statefulset
        );
        assert_eq!(
            of(&["controller-revision-hash", "pod-template-generation"]),
            Controller::DaemonsetOrStatefulset
        );
        assert_eq!(of(&["app", "job-name"]), Controller::Unknown);
        assert_eq!(Controller::Unknown.phrase(), "its controller");
    }

    /// A socket that is not there, or not a socket, gives no answer (and
    /// no wait).
    #[test]
    fn no_socket_no_controller() {
        let start = std::time::Instant::now();
        assert_eq!(controller(Path::new("/nonexistent/cri.sock"), "x"), None);
        assert_eq!(controller(Path::new("/etc/hostname"), "x"), None);
        assert!(start.elapsed() < LOOKUP_TIMEOUT);
    }

    /// A socket that accepts but never answers costs the timeout, no more.
    #[test]
    fn a_silent_socket_costs_the_timeout() {
        let dir = portwatch_test_support::Scratch::new("cri-silent");
        let path = dir.0.join("cri.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let start = std::time::Instant::now();
        let got: Result<ListPodSandboxResponse, _> = call(
            &path,
            "ListPodSandbox",
            ListPodSandboxRequest::default(),
            LOOKUP_TIMEOUT,
        );
        assert!(got.is_err());
        assert!(start.elapsed() < LOOKUP_TIMEOUT + Duration::from_millis(300));
    }
}
