use std::sync::Arc;
use std::time::Duration;

use super::*;

fn grant(id: &str) -> RequestId {
    RequestId(id.into())
}

async fn take(places: &Arc<Places>, request: &RequestId, limit: u32) -> Result<PlaceHold, u32> {
    PlaceHold::take(places, request, limit, Duration::ZERO).await
}

fn wait_for(
    places: &Arc<Places>,
    request: &RequestId,
    limit: u32,
) -> tokio::task::JoinHandle<Result<PlaceHold, u32>> {
    let (places, request) = (places.clone(), request.clone());
    tokio::spawn(async move { PlaceHold::take(&places, &request, limit, PLACE_WAIT).await })
}

#[tokio::test]
async fn a_grant_holds_at_most_its_limit_and_others_are_apart() {
    let places = Arc::new(Places::default());
    let a = grant("req-a");
    let first = take(&places, &a, 2).await.expect("first");
    let _second = take(&places, &a, 2).await.expect("second");
    assert_eq!(take(&places, &a, 2).await.err(), Some(2));
    let _other = take(&places, &grant("req-b"), 1)
        .await
        .expect("another grant's place");
    drop(first);
    assert_eq!(places.held(&a), 1);
    let _again = take(&places, &a, 2).await.expect("given back");
}

#[tokio::test(start_paused = true)]
async fn a_login_at_the_limit_takes_a_place_given_back_while_it_waits() {
    let places = Arc::new(Places::default());
    let a = grant("req-a");
    let first = take(&places, &a, 1).await.expect("first");
    let waiting = wait_for(&places, &a, 1);
    tokio::time::sleep(PLACE_WAIT / 2).await;
    assert!(!waiting.is_finished(), "it waits for a place");
    drop(first);
    let second = waiting.await.expect("task").expect("the place given back");
    assert_eq!(places.held(&a), 1);
    drop(second);
    assert!(places.lock().is_empty(), "nothing left behind");
}

#[tokio::test(start_paused = true)]
async fn a_login_is_refused_when_no_place_is_given_back_in_time() {
    let places = Arc::new(Places::default());
    let a = grant("req-a");
    let _first = take(&places, &a, 1).await.expect("first");
    let start = tokio::time::Instant::now();
    let refused = wait_for(&places, &a, 1).await.expect("task");
    assert_eq!(refused.err(), Some(1));
    assert!(start.elapsed() >= PLACE_WAIT, "it waited the whole time");
    assert_eq!(places.lock()[&a].waiting, 0, "no longer counted as waiting");
}

#[tokio::test(start_paused = true)]
async fn no_more_logins_wait_than_the_grant_has_places() {
    let places = Arc::new(Places::default());
    let (a, b) = (grant("req-a"), grant("req-b"));
    let first = take(&places, &a, 1).await.expect("first");
    let waiting = wait_for(&places, &a, 1);
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let at_once = wait_for(&places, &a, 1).await.expect("task");
    assert_eq!(at_once.err(), Some(1), "refused");
    assert_eq!(start.elapsed(), Duration::ZERO, "at once, without a wait");
    // Another grant's logins wait on their own.
    let _b = take(&places, &b, 1).await.expect("b's first");
    let b_waiting = wait_for(&places, &b, 1);
    tokio::task::yield_now().await;
    assert!(!b_waiting.is_finished());
    drop(first);
    let _second = waiting.await.expect("task").expect("the one waiting");
    assert!(!b_waiting.is_finished(), "a's place given back wakes no b");
    assert_eq!(b_waiting.await.expect("task").err(), Some(1));
}

#[tokio::test(start_paused = true)]
async fn two_logins_waiting_for_one_place_get_it_one_at_a_time() {
    let places = Arc::new(Places::default());
    let a = grant("req-a");
    let first = take(&places, &a, 2).await.expect("first");
    let _second = take(&places, &a, 2).await.expect("second");
    let (one, two) = (wait_for(&places, &a, 2), wait_for(&places, &a, 2));
    tokio::task::yield_now().await;
    drop(first);
    let (one, two) = (one.await.expect("task"), two.await.expect("task"));
    assert!(
        one.is_ok() != two.is_ok(),
        "exactly one of them took the place"
    );
    assert_eq!(places.held(&a), 2);
}

#[tokio::test(start_paused = true)]
async fn a_login_dropped_while_it_waits_is_no_longer_counted() {
    let places = Arc::new(Places::default());
    let a = grant("req-a");
    let first = take(&places, &a, 1).await.expect("first");
    let waiting = wait_for(&places, &a, 1);
    tokio::task::yield_now().await;
    waiting.abort();
    assert!(waiting.await.is_err(), "aborted");
    drop(first);
    assert!(places.lock().is_empty(), "neither held nor waiting");
}
