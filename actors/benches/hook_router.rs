//! The hook router's matching: events/s through `HooksHandle::dispatch` with 1, 100 and 10,000 subscriptions, against
//! matching every pattern one by one (what a router without the subject trie would do), and events/s delivered when
//! every subscription matches (each to its own channel, drained by its own task).
//!
//! `cargo bench -p pando-actors --bench hook_router` (release). `PANDO_BENCH_EVENTS` sets the events per case
//! (default 200000). Under `cargo test --benches` it runs a smoke pass of 2,000 events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use pando_actors::hooks::HooksHandle;
use pando_protocol::hook::subject::matches;
use pando_protocol::hook::{EventBody, HookEvent};

fn event(seq: u64, subject: &str) -> Arc<HookEvent> {
    Arc::new(HookEvent {
        seq,
        subject: subject.to_string(),
        time_ms: 0,
        revision: seq,
        body: EventBody::User { data: Vec::new().into() },
    })
}

fn main() {
    let measuring = std::env::args().any(|arg| arg == "--bench");
    let events: u64 = if measuring {
        std::env::var("PANDO_BENCH_EVENTS").ok().and_then(|value| value.parse().ok()).unwrap_or(200_000)
    } else {
        2_000
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(async move {
        for subscriptions in [1usize, 100, 10_000] {
            let patterns: Vec<String> = (0..subscriptions).map(|index| format!("kv.put.app{index}.>")).collect();
            // Nothing matches: the cost of finding that out.
            let handle = HooksHandle::default();
            handle.start(0);
            let held: Vec<_> = patterns.iter().map(|pattern| handle.subscribe(pattern).unwrap()).collect();
            let started = Instant::now();
            for seq in 1..=events {
                handle.dispatch(&event(seq, "kv.put.other.config.db"));
            }
            let trie = events as f64 / started.elapsed().as_secs_f64();
            drop(held);
            let started = Instant::now();
            let mut found = 0u64;
            let scan_events = (events / subscriptions as u64).max(100);
            for seq in 1..=scan_events {
                let subject = event(seq, "kv.put.other.config.db");
                found += patterns.iter().filter(|pattern| matches(pattern, &subject.subject)).count() as u64;
            }
            let linear = scan_events as f64 / started.elapsed().as_secs_f64();
            assert_eq!(found, 0);
            println!(
                "{subscriptions:>6} subscriptions, none matching: trie {trie:>12.0} events/s   one by one {linear:>12.0} \
                 events/s"
            );
            // Every subscription matches: each event goes to every channel, each drained by its own task. Dispatch
            // goes in batches of 512 and waits for every drain to take the batch (a channel holds 1,024 events before
            // its stream is dropped as lagging), so this is routed and consumed, not routed and dropped.
            let handle = HooksHandle::default();
            handle.start(0);
            let fan_events = (events / subscriptions as u64).max(1_024);
            let taken: Arc<Vec<AtomicU64>> = Arc::new((0..subscriptions).map(|_| AtomicU64::new(0)).collect());
            let mut drains = Vec::new();
            for index in 0..subscriptions {
                let mut subscription = handle.subscribe("kv.>").unwrap();
                let taken = taken.clone();
                drains.push(tokio::spawn(async move {
                    while let Some(event) = subscription.events.recv().await {
                        taken[index].store(event.seq, Ordering::Release);
                        if event.seq == fan_events {
                            break;
                        }
                    }
                }));
            }
            let started = Instant::now();
            for seq in 1..=fan_events {
                handle.dispatch(&event(seq, "kv.put.app.config"));
                if seq % 512 == 0 || seq == fan_events {
                    while taken.iter().any(|taken| taken.load(Ordering::Acquire) < seq) {
                        tokio::task::yield_now().await;
                    }
                }
            }
            for drain in drains {
                drain.await.unwrap();
            }
            let elapsed = started.elapsed().as_secs_f64();
            println!(
                "{subscriptions:>6} subscriptions, all matching: {:>10.0} events/s routed and taken, {:>12.0} deliveries/s",
                fan_events as f64 / elapsed,
                (fan_events * subscriptions as u64) as f64 / elapsed,
            );
        }
    });
}
