//! Protocols through the mesh: HTTP/1.1 (absolute and origin form), h2c, gRPC with trailers,
//! and opaque TCP through CONNECT.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use weft_e2e::apps::echo;
use weft_e2e::client::{H1, H2, connect_tunnel};
use weft_e2e::mesh::Mesh;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http1_in_both_request_forms() {
    let mesh = Mesh::start(&[]).await;
    let mut c = H1::connect(mesh.client.outbound).await.unwrap();

    let r = c.get("http://api:8080/abs", &[]).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "api"));
    assert_eq!(r.header("x-app-saw-version"), Some("HTTP/1.1"));
    assert_eq!(r.header("x-app-saw-path"), Some("/abs"));
    assert_eq!(
        r.header("x-app-saw-host"),
        Some("api:8080"),
        "the app sees its Host"
    );

    // Origin form with a Host header, as a client that talks to the proxy directly sends it.
    let r = c.get("/origin", &[("host", "api:8080")]).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (200, "api"));
    assert_eq!(r.header("x-app-saw-path"), Some("/origin"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_prior_knowledge_reaches_the_app_as_http2() {
    let mesh = Mesh::start(&[]).await;
    let mut c = H2::connect(mesh.client.outbound).await.unwrap();
    for i in 0..10 {
        let r = c
            .get(&format!("http://api:8080/h2/{i}"), &[])
            .await
            .unwrap();
        assert_eq!((r.status, r.text().as_str()), (200, "api"));
        assert_eq!(r.header("x-app-saw-version"), Some("HTTP/2.0"));
        assert_eq!(
            r.header("x-app-saw-path"),
            Some(format!("/h2/{i}").as_str())
        );
    }
}

/// A tonic client whose requests carry `:authority = web-grpc:9090` but whose connection goes to
/// the client workload's sidecar, as a gRPC app configured with a proxy would do.
async fn grpc_client(
    sidecar: SocketAddr,
) -> echo::echo_client::EchoClient<tonic::transport::Channel> {
    let channel = tonic::transport::Endpoint::from_static("http://web-grpc:9090")
        .connect_with_connector(tower::service_fn(move |_: http::Uri| async move {
            let stream = tokio::net::TcpStream::connect(sidecar).await?;
            Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
        }))
        .await
        .expect("gRPC channel through the sidecar");
    echo::echo_client::EchoClient::new(channel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_calls_keep_their_trailers() {
    let mesh = Mesh::start(&[]).await;
    let mut client = grpc_client(mesh.client.outbound).await;

    // A successful call: tonic fails the call if grpc-status (a trailer) does not arrive.
    let reply = client
        .say(echo::SayRequest {
            message: "hello".into(),
        })
        .await
        .expect("unary call through the mesh")
        .into_inner();
    assert_eq!(reply.message, "hello");
    assert!(reply.served_by.starts_with("web-v"), "{reply:?}");

    // A failing call: the status code and message travel back intact.
    let status = client
        .say(echo::SayRequest {
            message: "fail".into(),
        })
        .await
        .expect_err("the app fails this call");
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");
    assert_eq!(status.message(), "asked to fail");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_echo_through_connect() {
    let mesh = Mesh::start(&[]).await;
    let mut tunnel = connect_tunnel(mesh.client.outbound, "web-tcp:9000")
        .await
        .expect("CONNECT through the sidecar");
    for word in ["ping", "pong"] {
        tunnel.write_all(word.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 64];
        let n = tunnel.read(&mut buf).await.unwrap();
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(
            got == format!("web-v1 {word}") || got == format!("web-v2 {word}"),
            "echo through the mesh: {got:?}"
        );
    }
}
