//! A tokio task owned by a `TaskHandle` is aborted when the handle is dropped.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

#[tokio::test]
async fn a_tokio_task_is_aborted_on_drop_and_runs_on_when_detached() {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let task = tokio::spawn(async move {
        let _keep = tx;
        tokio::time::sleep(Duration::from_secs(3600)).await;
    });
    let handle = zt_rotate::TaskHandle::from_tokio(task);
    assert!(handle.is_running());
    drop(handle);
    // Aborted: the task and its sender are dropped.
    assert!(rx.recv().await.is_none());

    let (tx, mut rx) = tokio::sync::mpsc::channel::<u8>(1);
    let task = tokio::spawn(async move {
        tokio::task::yield_now().await;
        let _ = tx.send(7).await;
    });
    zt_rotate::TaskHandle::from_tokio(task).detach();
    assert_eq!(rx.recv().await, Some(7));
}
