//! `pando actors`: a node's supervision tree as an observer sees it. Per actor its mailbox (messages waiting and
//! handled, and how long the one in its handler has run, counted by the actor runtime, so a stuck actor shows even
//! though it cannot answer), its restarts and the last failure's reason, and what a plugin instance or job worker
//! runs now. `--watch` asks again every interval and redraws in place on a terminal (a snapshot after another
//! through a pipe, one JSON line each with `--json`), with each actor's handled messages per second.
//!
//! The table is a pure function of the answer and the previous one, so tests render it without a node.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Args;
use pando_client::Client;
use pando_client::pando_protocol::cluster::ActorReport;
use serde_json::json;

use crate::output::{print_json, utc};

/// A message in its handler this long makes the actor's state read `busy` instead of `running`.
const BUSY_SHOWN_MS_MIN: u64 = 1_000;
/// Refresh bounds of `--watch`, in milliseconds.
const WATCH_INTERVAL_MS_MIN: u64 = 100;
const WATCH_INTERVAL_MS_MAX: u64 = 3_600_000;
/// Clears a terminal and puts the cursor top left (ANSI), so each refresh draws over the last.
const CLEAR_SCREEN: &str = "\x1b[H\x1b[2J";

#[derive(Debug, Args)]
pub struct ActorsArgs {
    /// Ask again every --interval-ms and redraw in place (a terminal), or print one snapshot after another (a pipe;
    /// with --json one JSON object per line), until Ctrl-C or --count refreshes.
    #[arg(long)]
    watch: bool,
    /// Milliseconds between refreshes with --watch.
    #[arg(
        long,
        default_value_t = 1_000,
        value_parser = clap::value_parser!(u64).range(WATCH_INTERVAL_MS_MIN..=WATCH_INTERVAL_MS_MAX)
    )]
    interval_ms: u64,
    /// Stop after this many refreshes with --watch.
    #[arg(long, requires = "watch", value_parser = clap::value_parser!(u64).range(1..))]
    count: Option<u64>,
}

pub async fn run(client: &Client, args: ActorsArgs, json_output: bool) -> anyhow::Result<()> {
    if !args.watch {
        let (node_id, actors) = client.actors().await?;
        if json_output {
            print_json(&serde_json::to_value(&actors)?);
        } else {
            print!("{}", render(node_id, &actors, None));
        }
        return Ok(());
    }
    watch(client, &args, json_output).await
}

/// The `--watch` loop: a failed refresh is shown and asked again at the next tick (a node restarting is what an
/// observer watches for), so only Ctrl-C, `--count` or a closed output (`| head`) ends it.
async fn watch(client: &Client, args: &ActorsArgs, json_output: bool) -> anyhow::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let interval = Duration::from_millis(args.interval_ms);
    let mut ticks = tokio::time::interval(interval);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // One listener for the whole loop: a Ctrl-C while a refresh is drawn is not lost.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    let mut previous: Option<Snapshot> = None;
    let mut refreshes = 0_u64;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = &mut interrupted => break,
        }
        let answer = tokio::select! {
            answer = client.actors() => answer,
            _ = &mut interrupted => break,
        };
        let now_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |since| since.as_millis() as u64);
        let frame = match answer {
            Ok((node_id, actors)) => {
                let snapshot = Snapshot::of(node_id, &actors, Instant::now());
                let rates = previous.as_ref().and_then(|previous| snapshot.rates(previous));
                previous = Some(snapshot);
                if json_output {
                    format!("{}\n", json!({ "at": utc(now_ms), "node_id": node_id, "actors": actors, "rates": rates }))
                } else {
                    let header = header(node_id, actors.len(), interval, now_ms);
                    let table = render(node_id, &actors, Some(&rates.unwrap_or_default()));
                    format!("{}{header}\n{table}{}", clear(terminal), if terminal { "" } else { "\n" })
                }
            }
            Err(error) => {
                // The next answer may come from another node, or after a restart: no rate across the gap.
                previous = None;
                if json_output {
                    format!("{}\n", json!({ "at": utc(now_ms), "error": error.to_string() }))
                } else {
                    let retry = format!("asking again in {}", span(args.interval_ms));
                    format!(
                        "{}{}: error: {} ({retry})\n\n",
                        clear(terminal),
                        utc(now_ms),
                        printable(&error.to_string())
                    )
                }
            }
        };
        let mut out = std::io::stdout().lock();
        match out.write_all(frame.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => {}
            // The reader went away (`pando actors --watch | head`): done, not a failure.
            Err(error) if error.kind() == std::io::ErrorKind::BrokenPipe => break,
            Err(error) => return Err(error.into()),
        }
        refreshes += 1;
        if args.count.is_some_and(|count| refreshes >= count) {
            break;
        }
    }
    Ok(())
}

fn clear(terminal: bool) -> &'static str {
    if terminal { CLEAR_SCREEN } else { "" }
}

/// Text from the node (a failure's reason, a detail line, a plugin's error) with control characters shown as `?`,
/// so nothing an actor or plugin says can move the cursor or recolour the terminal.
fn printable(text: &str) -> String {
    text.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

/// Each live actor's handled count when it was asked, to turn two answers into rates.
struct Snapshot {
    /// The node that answered: counts of two nodes are not compared.
    node_id: Option<u64>,
    at: Instant,
    /// Path to (the instance's id, its handled count): a restarted actor counts from 0 again, so a rate is only taken
    /// between two answers about the same instance.
    handled: HashMap<String, (Option<String>, u64)>,
}

impl Snapshot {
    fn of(node_id: Option<u64>, actors: &[ActorReport], at: Instant) -> Snapshot {
        let handled = actors
            .iter()
            .filter_map(|actor| {
                let handled = actor.mailbox.as_ref()?.handled;
                Some((actor.path.clone(), (actor.actor_id.clone(), handled)))
            })
            .collect();
        Snapshot { node_id, at, handled }
    }

    /// Messages handled per second by each actor seen in both answers as the same instance; `None` when the answers
    /// came from different nodes.
    fn rates(&self, before: &Snapshot) -> Option<HashMap<String, f64>> {
        let seconds = self.at.saturating_duration_since(before.at).as_secs_f64();
        if self.node_id != before.node_id || seconds <= 0.0 {
            return None;
        }
        let rates = self
            .handled
            .iter()
            .filter_map(|(path, (id, handled))| {
                let (before_id, before_handled) = before.handled.get(path)?;
                (before_id == id && handled >= before_handled)
                    .then(|| (path.clone(), (handled - before_handled) as f64 / seconds))
            })
            .collect();
        Some(rates)
    }
}

fn header(node_id: Option<u64>, count: usize, interval: Duration, now_ms: u64) -> String {
    let node = node_id.map_or_else(|| "the node".to_string(), |id| format!("node {id}"));
    format!("{node}: {count} actors, every {}, {} (Ctrl-C stops)", span(interval.as_millis() as u64), utc(now_ms))
}

/// The tree as a table: one row per actor, indented by depth, and a line under an actor that failed before. `rates`
/// adds a column of handled messages per second (`--watch`; empty on its first answer).
pub fn render(node_id: Option<u64>, actors: &[ActorReport], rates: Option<&HashMap<String, f64>>) -> String {
    // Children of the root are at depth 0: every path starts with the root's name.
    let depth = |actor: &ActorReport| actor.path.matches('/').count().saturating_sub(1);
    let name = |actor: &ActorReport| {
        format!("{}{}", "  ".repeat(depth(actor)), actor.path.rsplit('/').next().unwrap_or(&actor.path))
    };
    let width = actors.iter().map(|actor| name(actor).chars().count()).max().unwrap_or(0).max("ACTOR".len());
    let mut out = String::new();
    if let Some(node_id) = node_id
        && rates.is_none()
    {
        out += &format!("node {node_id}\n");
    }
    out += &format!("{:<width$}  {:<13} {:>7} {:>9}", "ACTOR", "STATE", "QUEUED", "HANDLED");
    if rates.is_some() {
        out += &format!(" {:>8}", "PER SEC");
    }
    out += &format!(" {:>8}  NOW\n", "RESTARTS");
    for actor in actors {
        let mailbox = actor.mailbox.as_ref();
        let state = match mailbox.and_then(|mailbox| mailbox.busy_ms) {
            _ if !actor.alive => "stopped".to_string(),
            Some(busy) if busy >= BUSY_SHOWN_MS_MIN => format!("busy {}", span(busy)),
            _ => "running".to_string(),
        };
        let count = |value: Option<u64>| value.map_or_else(|| "-".to_string(), |value| value.to_string());
        out += &format!(
            "{:<width$}  {state:<13} {:>7} {:>9}",
            name(actor),
            count(mailbox.map(|mailbox| mailbox.queued)),
            count(mailbox.map(|mailbox| mailbox.handled)),
        );
        if let Some(rates) = rates {
            let rate = rates.get(&actor.path).map_or_else(|| "-".to_string(), |rate| format!("{rate:.1}"));
            out += &format!(" {rate:>8}");
        }
        let now = match (&actor.current, &actor.detail) {
            (Some(current), _) => format!("{} for {}", printable(&current.what), span(current.running_ms)),
            (None, Some(detail)) => printable(detail),
            (None, None) => String::new(),
        };
        out += format!(" {:>8}  {now}", actor.restarts).trim_end();
        out += "\n";
        if let Some(failure) = &actor.last_failure {
            let when = failure.ago_ms.map(|ago| format!(" {} ago", span(ago))).unwrap_or_default();
            out += &format!("{}last failure{when}: {}\n", "  ".repeat(depth(actor) + 1), printable(&failure.reason));
        }
    }
    out
}

/// A duration as people read it: `250 ms`, `4.2 s`, `3 min`, `2 h`.
fn span(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms} ms"),
        1_000..60_000 => format!("{:.1} s", ms as f64 / 1_000.0),
        60_000..3_600_000 => format!("{} min", ms / 60_000),
        _ => format!("{} h", ms / 3_600_000),
    }
}

#[cfg(test)]
mod tests {
    use pando_client::human::debug_artifacts;
    use pando_client::pando_protocol::cluster::{CurrentCall, FailureReport, MailboxReport};

    use super::*;

    fn actor(path: &str) -> ActorReport {
        ActorReport {
            path: path.into(),
            alive: true,
            restarts: 0,
            actor_id: Some("0.7".into()),
            detail: None,
            mailbox: Some(MailboxReport { queued: 0, handled: 10, busy_ms: None }),
            last_failure: None,
            current: None,
        }
    }

    fn tree() -> Vec<ActorReport> {
        vec![
            ActorReport {
                detail: Some("one_for_one, 0 of at most 5 restarts within 30 s".into()),
                ..actor("node/raft")
            },
            ActorReport {
                mailbox: Some(MailboxReport { queued: 37, handled: 1_200, busy_ms: Some(12_500) }),
                ..actor("node/storage")
            },
            ActorReport {
                alive: false,
                restarts: 2,
                actor_id: None,
                mailbox: None,
                last_failure: Some(FailureReport { reason: "panicked: disk gone".into(), ago_ms: Some(4_000) }),
                ..actor("node/plugins/echo")
            },
            ActorReport {
                current: Some(CurrentCall { what: "call spin".into(), running_ms: 250 }),
                detail: Some("generation 3".into()),
                ..actor("node/plugins/echo/0")
            },
            ActorReport {
                last_failure: Some(FailureReport { reason: "timeout".into(), ago_ms: None }),
                ..actor("node/plugins/other")
            },
        ]
    }

    #[test]
    fn the_table_shows_queues_stuck_handlers_failures_and_current_calls_without_debug_text() {
        let table = render(Some(1), &tree(), None);
        assert!(debug_artifacts(&table).is_empty(), "{table}");
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines[0], "node 1");
        assert!(lines[1].starts_with("ACTOR") && lines[1].contains("QUEUED") && !lines[1].contains("PER SEC"));
        assert!(lines[3].contains("storage") && lines[3].contains("busy 12.5 s") && lines[3].contains(" 37 "));
        assert!(lines[4].contains("  echo") && lines[4].contains("stopped"), "{table}");
        assert_eq!(lines[5], "    last failure 4.0 s ago: panicked: disk gone");
        assert!(lines[6].contains("    0 ") && lines[6].ends_with("call spin for 250 ms"), "{table}");
        assert_eq!(lines[8], "    last failure: timeout");
        // Every row's columns line up under the header.
        let state_column = lines[1].find("STATE").unwrap();
        assert!(
            lines[2..].iter().filter(|line| !line.contains("last failure")).all(|line| {
                line[state_column..].starts_with("running")
                    || line[state_column..].starts_with("busy")
                    || line[state_column..].starts_with("stopped")
            }),
            "{table}"
        );
    }

    #[test]
    fn watching_adds_rates_per_instance_and_none_across_a_restart() {
        let start = Instant::now();
        let before = Snapshot::of(Some(1), &tree(), start);
        let mut later = tree();
        later[0].mailbox.as_mut().unwrap().handled = 30;
        later[3].actor_id = Some("0.9".into());
        later[3].mailbox.as_mut().unwrap().handled = 2;
        let rates = Snapshot::of(Some(1), &later, start + Duration::from_secs(2)).rates(&before).unwrap();
        assert_eq!(rates.get("node/raft"), Some(&10.0));
        assert_eq!(rates.get("node/storage"), Some(&0.0));
        assert_eq!(rates.get("node/plugins/echo/0"), None, "a restarted instance has no rate yet");
        let elsewhere = Snapshot::of(Some(2), &later, start + Duration::from_secs(2));
        assert!(elsewhere.rates(&before).is_none(), "no rates between two nodes' counts");
        let table = render(Some(1), &later, Some(&rates));
        assert!(!table.starts_with("node 1"), "the watch header names the node: {table}");
        assert!(table.lines().next().unwrap().contains("PER SEC"));
        assert!(table.lines().nth(1).unwrap().contains(" 10.0 "), "{table}");
        assert!(debug_artifacts(&table).is_empty(), "{table}");
        let header = header(Some(1), 5, Duration::from_millis(500), 0);
        assert_eq!(header, "node 1: 5 actors, every 500 ms, 1970-01-01T00:00:00.000Z (Ctrl-C stops)");
    }

    #[test]
    fn text_from_the_node_cannot_drive_the_terminal() {
        let mut actors = tree();
        actors[2].last_failure.as_mut().unwrap().reason = "gone\x1b[2J\x1b]0;owned\x07".into();
        actors[0].detail = Some("line\nbreak".into());
        let table = render(None, &actors, None);
        assert!(!table.contains('\x1b') && !table.contains('\x07'), "{table:?}");
        assert!(table.contains("gone?[2J?]0;owned?") && table.contains("line?break"), "{table}");
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(span(250), "250 ms");
        assert_eq!(span(4_200), "4.2 s");
        assert_eq!(span(180_000), "3 min");
        assert_eq!(span(7_200_000), "2 h");
    }
}
