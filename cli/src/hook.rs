//! `pando hook …`: live streams of events by subject, user events, and durable hooks (shell commands or plugin
//! functions) with retries, dead letters, redrive and replay.

use clap::{Args, Subcommand};
use pando_client::Client;
use pando_client::pando_protocol::hook::durable::{HookRecord, HookSpec, HookTarget, StartAt};
use pando_client::pando_protocol::hook::json::to_json;
use pando_client::pando_protocol::limits::{HOOK_ACK_WAIT_MS_DEFAULT, HOOK_MAX_DELIVER_DEFAULT};
use serde_json::{Value, json};

use crate::coord::parse_duration_ms;
use crate::output::print_json;

#[derive(Debug, Subcommand)]
pub enum HookCommand {
    /// Stream the events matching a subject pattern (`kv.put.app.>`, `lock.*.jobs.main`), one JSON object a line;
    /// Ctrl-C ends it.
    Watch {
        pattern: String,
        /// Start at this sequence (while the hook log holds it) instead of now.
        #[arg(long, default_value_t = 0)]
        from_seq: u64,
        /// Stop after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish a user event on a subject (outside the cluster's own `kv.`, `lock.`, `sys.` … roots).
    Publish {
        subject: String,
        /// The payload (JSON by convention; any bytes are kept as given).
        #[arg(default_value = "")]
        data: String,
    },
    /// Create a durable hook: a shell command (`--exec`) or a plugin function (`--plugin`, `--function`).
    Create(CreateArgs),
    /// Every durable hook: pattern, target, position, pending and dead counts.
    List,
    /// One hook in detail: its claim, position, ack floor, pending events and counters.
    Info {
        name: String,
    },
    /// Stop delivering (events keep accumulating; nothing is lost).
    Pause {
        name: String,
    },
    /// Deliver again.
    Resume {
        name: String,
    },
    Delete {
        name: String,
    },
    /// The events that failed for good, with their last error and attempt count.
    Dlq {
        name: String,
        /// Show dead letters after this sequence.
        #[arg(long, default_value_t = 0)]
        after: u64,
        #[arg(long, default_value_t = 100)]
        limit: u32,
    },
    /// Deliver the dead letters again, with fresh attempts.
    Redrive {
        name: String,
    },
    /// Rewind a hook to a sequence: what it delivered since is delivered again.
    Replay {
        name: String,
        #[arg(long = "from-seq", alias = "from-revision")]
        from_seq: u64,
    },
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    name: String,
    /// Subject pattern (`*` one token, `>` the rest).
    #[arg(long)]
    subject: String,
    /// Command to run per event (the event as JSON on stdin, and in PANDO_* variables); exit 0 acks, 65 terminates.
    #[arg(long, conflicts_with_all = ["plugin", "function"])]
    exec: Option<String>,
    /// Arguments of the command (after `--`).
    #[arg(last = true)]
    args: Vec<String>,
    /// Run `--exec` as a shell command line (`sh -c`) instead of a program with arguments.
    #[arg(long, requires = "exec")]
    shell: bool,
    /// Plugin whose function receives the events.
    #[arg(long, requires = "function", conflicts_with = "group")]
    plugin: Option<String>,
    /// Process group (`pando.hooks.<group>`) whose actors, on any node of the mesh, receive the events.
    #[arg(long, conflicts_with = "exec")]
    group: Option<String>,
    #[arg(long, requires = "plugin")]
    function: Option<String>,
    /// Attempts per event before it goes to the dead-letter list.
    #[arg(long, default_value_t = HOOK_MAX_DELIVER_DEFAULT)]
    max_deliver: u32,
    /// Delays before the retries, such as 1s,5s,30s (the last repeats; at most max-deliver − 1 steps).
    #[arg(long, value_delimiter = ',')]
    backoff: Vec<String>,
    /// How long one attempt may take before it counts as failed (default 30s).
    #[arg(long)]
    ack_wait: Option<String>,
    /// How long a command may run (default: the ack wait).
    #[arg(long)]
    timeout: Option<String>,
    /// Events in flight at once (1 delivers strictly in order).
    #[arg(long, default_value_t = 1)]
    max_in_flight: u32,
    /// Start at this sequence (while the log holds it) instead of with the next event.
    #[arg(long)]
    from_seq: Option<u64>,
}

fn duration(text: &str) -> anyhow::Result<u64> {
    parse_duration_ms(text).map_err(|error| anyhow::anyhow!(error))
}

fn spec(args: &CreateArgs) -> anyhow::Result<HookSpec> {
    let ack_wait_ms = args.ack_wait.as_deref().map(duration).transpose()?.unwrap_or(HOOK_ACK_WAIT_MS_DEFAULT);
    let target = match (&args.exec, &args.plugin, &args.function) {
        (None, None, None) if args.group.is_some() => {
            HookTarget::Group { group: args.group.clone().unwrap_or_default() }
        }
        (Some(command), None, None) => {
            let mut argv = vec![command.clone()];
            if args.shell && !args.args.is_empty() {
                anyhow::bail!("with --shell, put the whole command line in --exec");
            }
            argv.extend(args.args.iter().cloned());
            let timeout_ms = args.timeout.as_deref().map(duration).transpose()?.unwrap_or(ack_wait_ms);
            HookTarget::Exec { argv, shell: args.shell, timeout_ms }
        }
        (None, Some(plugin), Some(function)) => {
            HookTarget::Plugin { plugin: plugin.clone(), function: function.clone() }
        }
        _ => anyhow::bail!("a hook needs --exec COMMAND, --plugin NAME with --function NAME, or --group NAME"),
    };
    let backoff_ms = args.backoff.iter().map(|step| duration(step)).collect::<anyhow::Result<Vec<_>>>()?;
    Ok(HookSpec {
        pattern: args.subject.clone(),
        target,
        ack_wait_ms,
        max_deliver: args.max_deliver,
        backoff_ms,
        max_in_flight: args.max_in_flight,
    })
}

fn target_text(target: &HookTarget) -> String {
    match target {
        HookTarget::Exec { argv, shell: true, .. } => format!("sh -c {}", crate::output::shell_quote(&argv[0])),
        HookTarget::Exec { argv, .. } => argv.join(" "),
        HookTarget::Plugin { plugin, function } => format!("plugin {plugin}.{function}"),
        HookTarget::Group { group } => format!("group pando.hooks.{group}"),
    }
}

fn record_json(hook: &HookRecord) -> Value {
    json!({
        "name": hook.name,
        "pattern": hook.spec.pattern,
        "target": target_text(&hook.spec.target),
        "ack_wait_ms": hook.spec.ack_wait_ms,
        "max_deliver": hook.spec.max_deliver,
        "backoff_ms": hook.spec.backoff_ms,
        "max_in_flight": hook.spec.max_in_flight,
        "paused": hook.paused,
        "position": hook.position,
        "fence": hook.fence,
        "claim": hook.claim.map(|claim| json!({ "node": claim.node, "fence": claim.fence, "until_ms": claim.until_ms })),
        "pending": hook.pending,
        "dead_letters": hook.dead_letters,
        "delivered": hook.stats.delivered,
        "acked": hook.stats.acked,
        "dead": hook.stats.dead,
        "skipped": hook.stats.skipped,
    })
}

pub async fn hook(client: &Client, command: HookCommand, json_output: bool) -> anyhow::Result<()> {
    match command {
        HookCommand::Watch { pattern, from_seq, count } => {
            let mut watch = client.hook_watch(&pattern, from_seq);
            let mut seen = 0;
            while count.is_none_or(|count| seen < count) {
                let event = tokio::select! {
                    event = watch.next() => event?,
                    _ = tokio::signal::ctrl_c() => break,
                };
                seen += 1;
                // One JSON object a line, with or without --json: a stream is for programs.
                print_json(&to_json(&event));
            }
            watch.cancel().await;
        }
        HookCommand::Publish { subject, data } => {
            let seq = client.hook_publish(&subject, data.as_bytes()).await?;
            if json_output {
                print_json(&json!({ "seq": seq }));
            } else {
                println!("published as event {seq}");
            }
        }
        HookCommand::Create(args) => {
            let spec = spec(&args)?;
            let start = args.from_seq.map_or(StartAt::New, StartAt::Seq);
            let (existed, position) = client.hook_create(&args.name, spec, start).await?;
            if json_output {
                print_json(&json!({ "name": args.name, "existed": existed, "position": position }));
            } else if existed {
                println!("hook {} exists already with this spec", args.name);
            } else {
                println!("hook {} delivers events after sequence {position}", args.name);
            }
        }
        HookCommand::List => {
            let hooks = client.hook_list().await?;
            if json_output {
                print_json(&Value::Array(hooks.iter().map(record_json).collect()));
            } else if hooks.is_empty() {
                println!("no hooks");
            } else {
                for hook in hooks {
                    let state = match &hook.paused {
                        Some(why) => format!("paused ({why})"),
                        None => match hook.claim {
                            Some(claim) => format!("node {}", claim.node),
                            None => "unclaimed".into(),
                        },
                    };
                    println!(
                        "{}\t{}\t{}\t{state}\tposition {}\t{} pending\t{} dead",
                        hook.name,
                        hook.spec.pattern,
                        target_text(&hook.spec.target),
                        hook.position,
                        hook.pending,
                        hook.dead_letters
                    );
                }
            }
        }
        HookCommand::Info { name } => {
            let info = client.hook_info(&name).await?;
            let mut value = record_json(&info.record);
            value["ack_floor"] = json!(info.ack_floor);
            value["log_floor"] = json!(info.log_floor);
            value["log_next"] = json!(info.log_next);
            value["first_pending"] = Value::Array(
                info.pending
                    .iter()
                    .map(|pending| {
                        json!({
                            "seq": pending.event.seq,
                            "subject": pending.event.subject,
                            "attempt": pending.attempt,
                            "running": pending.in_flight,
                            "due_ms": pending.due_ms,
                            "last_error": pending.last_error,
                        })
                    })
                    .collect(),
            );
            if json_output {
                print_json(&value);
            } else {
                let hook = &info.record;
                println!("hook {}: {} -> {}", hook.name, hook.spec.pattern, target_text(&hook.spec.target));
                let backoff = match hook.spec.backoff_ms.as_slice() {
                    [] => "none".to_string(),
                    delays => crate::output::list(delays.iter().map(|ms| format!("{ms} ms"))),
                };
                println!(
                    "  ack wait {} ms, max deliver {}, backoff {}, max in flight {}",
                    hook.spec.ack_wait_ms, hook.spec.max_deliver, backoff, hook.spec.max_in_flight
                );
                match (&hook.paused, hook.claim) {
                    (Some(why), _) => println!("  paused: {why}"),
                    (None, Some(claim)) => println!("  delivered by node {} under fence {}", claim.node, claim.fence),
                    (None, None) => println!("  not claimed by any node yet"),
                }
                println!(
                    "  position {}, ack floor {}, log holds {}..{}",
                    hook.position,
                    info.ack_floor,
                    info.log_floor,
                    info.log_next.saturating_sub(1)
                );
                println!(
                    "  {} begun, {} acked, {} dead, {} skipped; {} pending, {} dead letters held",
                    hook.stats.delivered,
                    hook.stats.acked,
                    hook.stats.dead,
                    hook.stats.skipped,
                    hook.pending,
                    hook.dead_letters
                );
                for pending in &info.pending {
                    println!(
                        "  pending {} {} attempt {}{}{}",
                        pending.event.seq,
                        pending.event.subject,
                        pending.attempt,
                        if pending.in_flight { " (running)" } else { "" },
                        pending.last_error.as_deref().map(|error| format!(": {error}")).unwrap_or_default()
                    );
                }
            }
        }
        HookCommand::Pause { name } => {
            client.hook_pause(&name, true).await?;
            done(json_output, &format!("hook {name} paused"));
        }
        HookCommand::Resume { name } => {
            client.hook_pause(&name, false).await?;
            done(json_output, &format!("hook {name} delivers again"));
        }
        HookCommand::Delete { name } => {
            client.hook_delete(&name).await?;
            done(json_output, &format!("hook {name} deleted"));
        }
        HookCommand::Dlq { name, after, limit } => {
            let (letters, more) = client.hook_dead_letters(&name, after, limit).await?;
            if json_output {
                let letters: Vec<Value> = letters
                    .iter()
                    .map(|letter| {
                        json!({
                            "event": to_json(&letter.event),
                            "attempts": letter.attempts,
                            "error": letter.error,
                            "time_ms": letter.time_ms,
                        })
                    })
                    .collect();
                print_json(&json!({ "dead_letters": letters, "more": more }));
            } else {
                if letters.is_empty() {
                    println!("no dead letters");
                }
                for letter in &letters {
                    println!(
                        "{}\t{}\t{} attempts\t{}",
                        letter.event.seq, letter.event.subject, letter.attempts, letter.error
                    );
                }
                if let (true, Some(last)) = (more, letters.last()) {
                    eprintln!("more follow: pando hook dlq {name} --after {}", last.event.seq);
                }
            }
        }
        HookCommand::Redrive { name } => {
            let (count, more) = client.hook_redrive(&name).await?;
            if json_output {
                print_json(&json!({ "redriven": count, "more": more }));
            } else {
                println!(
                    "{count} dead letters of {name} will be delivered again{}",
                    if more { " (more left: redrive again)" } else { "" }
                );
            }
        }
        HookCommand::Replay { name, from_seq } => {
            let from = client.hook_replay(&name, from_seq).await?;
            if json_output {
                print_json(&json!({ "from": from }));
            } else {
                println!("hook {name} delivers again from sequence {from}");
            }
        }
    }
    Ok(())
}

fn done(json_output: bool, message: &str) {
    if json_output {
        print_json(&json!({ "ok": true }));
    } else {
        println!("{message}");
    }
}
