//! Material from a source of one's own (here a stand-in for a secrets manager), pushed through
//! the public `MaterialHolder` trait into a running server: new handshakes use it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "support/tls.rs"]
mod support;

use std::sync::mpsc;
use std::time::Duration;

use mtls_verify::{Error, MaterialHolder, TlsMaterial};
use support::{
    TestServer, ca_with_server_and_client, client_with, connect, server_builder, tls_material,
    wait_for,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn material_pushed_by_a_source_of_ones_own_serves_the_next_handshake() {
    let (ca1, server1, client1) = ca_with_server_and_client("first CA");
    let tls = server_builder(&ca1, &server1).build().unwrap();
    let mut srv = TestServer::start(tls.clone()).await;
    let out = connect(srv.addr, client_with(&ca1, &client1)).await;
    assert!(out.accepted(), "{out:?}");
    let _ = srv.next_event().await;

    // The "secrets manager": a channel of new material, drained by a task the handle owns.
    let (publish, secrets) = mpsc::channel::<TlsMaterial>();
    let holder = tls.clone();
    let handle = zt_rotate::TaskHandle::spawn_thread("secrets-source", move |stop| {
        while !stop.is_stopped() {
            match secrets.recv_timeout(Duration::from_millis(20)) {
                Ok(material) => {
                    let _ = holder.update(material);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => return,
            }
        }
    })
    .unwrap();

    // Refused material (a key from another certificate) leaves the first set serving.
    let (ca2, server2, client2) = ca_with_server_and_client("second CA");
    publish
        .send(TlsMaterial::from_pem(
            server2.chain_pem.as_bytes(),
            server1.key_pem.as_bytes(),
            ca1.cert_pem.as_bytes(),
        ))
        .unwrap();
    wait_for("the refusal", || tls.status().rejected_updates == 1).await;
    assert!(matches!(
        tls.status().last_error,
        Some(Error::KeyMismatch { .. })
    ));
    let rotation = MaterialHolder::status(&tls);
    assert_eq!((rotation.generation, rotation.failures), (1, 1));
    assert!(rotation.last_error.unwrap().message.contains("<memory>"));
    let out = connect(srv.addr, client_with(&ca1, &client1)).await;
    assert_eq!(
        out.server_serial.as_deref(),
        Some(server1.serial_hex().as_str())
    );
    let _ = srv.next_event().await;

    // Good material: the next handshake presents the new certificate and trusts the new CA.
    publish.send(tls_material(&ca2, &server2)).unwrap();
    wait_for("generation 2", || tls.status().generation == 2).await;
    let out = connect(srv.addr, client_with(&ca2, &client2)).await;
    assert!(out.accepted(), "{out:?}");
    assert_eq!(
        out.server_serial.as_deref(),
        Some(server2.serial_hex().as_str())
    );
    let _ = srv.next_event().await;
    let old = connect(srv.addr, client_with(&ca1, &client1)).await;
    assert!(!old.accepted(), "the old CA is still trusted: {old:?}");
    let _ = srv.next_event().await;

    let rotation = MaterialHolder::status(&tls);
    assert_eq!(rotation.generation, 2);
    assert!(rotation.last_error.is_none());
    assert_eq!(rotation.last_success, rotation.loaded_at);
    handle.stop();
}
