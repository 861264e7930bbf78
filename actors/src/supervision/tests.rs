//! The supervisor on its own, on paused time: each strategy, each restart type, the intensity limit, ordering.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, ActorStatus, RpcReplyPort};

use super::*;

/// What test children did, in order: "start a", "stop a".
type Log = Arc<Mutex<Vec<String>>>;

#[derive(Clone)]
struct TestChild;

#[derive(Clone)]
struct TestChildArgs {
    name: String,
    log: Log,
}

enum TestMsg {
    Panic,
    Fail,
    Exit,
    ExitAbnormally,
    /// Stays in the handler until notified (a stuck actor).
    Block(Arc<tokio::sync::Notify>),
    /// Does nothing (a message that waits behind a stuck one).
    Nothing,
    Control(Control),
}

impl ractor::Message for TestMsg {}

impl From<Control> for TestMsg {
    fn from(control: Control) -> TestMsg {
        TestMsg::Control(control)
    }
}

impl Actor for TestChild {
    type Msg = TestMsg;
    type State = TestChildArgs;
    type Arguments = TestChildArgs;

    async fn pre_start(&self, _: ActorRef<TestMsg>, args: TestChildArgs) -> Result<TestChildArgs, ActorProcessingErr> {
        args.log.lock().unwrap().push(format!("start {}", args.name));
        Ok(args)
    }

    async fn post_stop(&self, _: ActorRef<TestMsg>, state: &mut TestChildArgs) -> Result<(), ActorProcessingErr> {
        state.log.lock().unwrap().push(format!("stop {}", state.name));
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<TestMsg>,
        msg: TestMsg,
        state: &mut TestChildArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TestMsg::Control(Control::Status(reply, _)) => {
                let _ = reply.send(ActorDetail::line(format!("test child {}", state.name)));
            }
            TestMsg::Control(Control::InjectPanic) => panic!("test child told to panic"),
            TestMsg::Panic => panic!("test child panics on purpose"),
            TestMsg::Fail => return Err("test child fails on purpose".into()),
            TestMsg::Exit => myself.stop(None),
            TestMsg::ExitAbnormally => myself.stop(Some("crashed".into())),
            TestMsg::Block(release) => release.notified().await,
            TestMsg::Nothing => {}
        }
        Ok(())
    }
}

fn child(name: &str, restart: Restart, log: &Log) -> ChildSpec {
    ChildSpec::new(name, restart, TestChild, TestChildArgs { name: name.into(), log: log.clone() })
}

async fn start(strategy: Strategy, children: Vec<ChildSpec>) -> ActorRef<SupervisorMsg> {
    let args = SupervisorArgs {
        name: "test".into(),
        options: SupervisorOptions::new(strategy, 3, Duration::from_secs(5)),
        children,
    };
    let (supervisor, _) = Actor::spawn(None, Supervisor, args).await.expect("supervisor starts");
    supervisor
}

async fn status(supervisor: &ActorRef<SupervisorMsg>) -> SupervisorStatus {
    ractor::call_t!(supervisor, SupervisorMsg::Status, 1_000).expect("supervisor answers")
}

async fn child_ref(supervisor: &ActorRef<SupervisorMsg>, id: &str) -> ActorRef<TestMsg> {
    let cell = ractor::call_t!(supervisor, SupervisorMsg::Child, 1_000, id.to_string()).unwrap().expect("child alive");
    ActorRef::from(cell)
}

/// Polls the supervisor until `done` holds, on paused time, for at most ten simulated seconds.
async fn wait_for(supervisor: &ActorRef<SupervisorMsg>, done: impl Fn(&SupervisorStatus) -> bool) -> SupervisorStatus {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let current = status(supervisor).await;
        if done(&current) {
            return current;
        }
        assert!(tokio::time::Instant::now() < deadline, "condition not reached: {current:?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn ids(status: &SupervisorStatus) -> Vec<Option<String>> {
    status.children.iter().map(|child| child.actor_id.clone()).collect()
}

#[tokio::test(start_paused = true)]
async fn one_for_one_restarts_only_the_child_that_panicked() {
    let log = Log::default();
    let supervisor =
        start(Strategy::OneForOne, vec![child("a", Restart::Permanent, &log), child("b", Restart::Permanent, &log)])
            .await;
    let before = ids(&status(&supervisor).await);
    child_ref(&supervisor, "a").await.cast(TestMsg::Panic).unwrap();
    let after = wait_for(&supervisor, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
    assert_ne!(ids(&after)[0], before[0]);
    assert_eq!(ids(&after)[1], before[1], "the sibling keeps running");
}

#[tokio::test(start_paused = true)]
async fn a_child_returning_err_is_restarted() {
    let log = Log::default();
    let supervisor = start(Strategy::OneForOne, vec![child("a", Restart::Transient, &log)]).await;
    child_ref(&supervisor, "a").await.cast(TestMsg::Fail).unwrap();
    wait_for(&supervisor, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
    assert_eq!(log.lock().unwrap().iter().filter(|line| *line == "start a").count(), 2);
}

#[tokio::test(start_paused = true)]
async fn normal_exit_restarts_permanent_children_only() {
    let log = Log::default();
    let supervisor = start(
        Strategy::OneForOne,
        vec![
            child("p", Restart::Permanent, &log),
            child("t", Restart::Transient, &log),
            child("x", Restart::Temporary, &log),
        ],
    )
    .await;
    for id in ["p", "t", "x"] {
        child_ref(&supervisor, id).await.cast(TestMsg::Exit).unwrap();
    }
    let after = wait_for(&supervisor, |s| {
        s.children[0].restarts == 1 && s.children[0].alive && !s.children[1].alive && !s.children[2].alive
    })
    .await;
    assert_eq!((after.children[1].restarts, after.children[2].restarts), (0, 0));
    // A transient child that stops abnormally is restarted; a temporary one never is.
    let supervisor =
        start(Strategy::OneForOne, vec![child("t2", Restart::Transient, &log), child("x2", Restart::Temporary, &log)])
            .await;
    child_ref(&supervisor, "t2").await.cast(TestMsg::ExitAbnormally).unwrap();
    child_ref(&supervisor, "x2").await.cast(TestMsg::Panic).unwrap();
    let after =
        wait_for(&supervisor, |s| s.children[0].restarts == 1 && s.children[0].alive && !s.children[1].alive).await;
    assert_eq!(after.children[1].restarts, 0);
}

#[tokio::test(start_paused = true)]
async fn rest_for_one_restarts_the_child_and_those_after_it() {
    let log = Log::default();
    let supervisor = start(
        Strategy::RestForOne,
        vec![
            child("a", Restart::Permanent, &log),
            child("b", Restart::Permanent, &log),
            child("c", Restart::Permanent, &log),
        ],
    )
    .await;
    let before = ids(&status(&supervisor).await);
    log.lock().unwrap().clear();
    child_ref(&supervisor, "b").await.cast(TestMsg::Panic).unwrap();
    let after = wait_for(&supervisor, |s| s.children.iter().all(|c| c.alive) && s.children[1].restarts == 1).await;
    let after = ids(&after);
    assert_eq!(after[0], before[0]);
    assert_ne!(after[1], before[1]);
    assert_ne!(after[2], before[2]);
    // b panicked (no post_stop), c was stopped gracefully, then b and c started in order.
    assert_eq!(*log.lock().unwrap(), vec!["stop c", "start b", "start c"]);
}

#[tokio::test(start_paused = true)]
async fn one_for_all_restarts_every_child() {
    let log = Log::default();
    let supervisor = start(
        Strategy::OneForAll,
        vec![
            child("a", Restart::Permanent, &log),
            child("b", Restart::Permanent, &log),
            child("c", Restart::Permanent, &log),
        ],
    )
    .await;
    let before = ids(&status(&supervisor).await);
    log.lock().unwrap().clear();
    child_ref(&supervisor, "b").await.cast(TestMsg::Fail).unwrap();
    let after = wait_for(&supervisor, |s| s.children.iter().all(|c| c.alive) && s.recent_restarts == 1).await;
    assert!(ids(&after).iter().zip(&before).all(|(a, b)| a != b));
    assert_eq!(*log.lock().unwrap(), vec!["stop c", "stop a", "start a", "start b", "start c"]);
}

#[tokio::test(start_paused = true)]
async fn a_restart_storm_escalates_and_stops_children_in_reverse_order() {
    let log = Log::default();
    let (supervisor, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            name: "storm".into(),
            options: SupervisorOptions::new(Strategy::OneForOne, 3, Duration::from_secs(5)),
            children: vec![
                child("a", Restart::Permanent, &log),
                child("b", Restart::Permanent, &log),
                child("c", Restart::Permanent, &log),
            ],
        },
    )
    .await
    .unwrap();
    for round in 1..=3 {
        child_ref(&supervisor, "c").await.cast(TestMsg::Panic).unwrap();
        wait_for(&supervisor, |s| s.children[2].restarts == round && s.children[2].alive).await;
    }
    log.lock().unwrap().clear();
    child_ref(&supervisor, "c").await.cast(TestMsg::Panic).unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle).await.expect("supervisor exits").unwrap();
    assert_eq!(supervisor.get_status(), ActorStatus::Stopped);
    assert_eq!(*log.lock().unwrap(), vec!["stop b", "stop a"]);
}

#[tokio::test(start_paused = true)]
async fn restarts_spread_over_more_than_the_period_do_not_escalate() {
    let log = Log::default();
    let supervisor = start(Strategy::OneForOne, vec![child("a", Restart::Permanent, &log)]).await;
    for round in 1..=6 {
        child_ref(&supervisor, "a").await.cast(TestMsg::Panic).unwrap();
        wait_for(&supervisor, |s| s.children[0].restarts == round && s.children[0].alive).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    assert!(status(&supervisor).await.recent_restarts <= 2);
}

#[tokio::test(start_paused = true)]
async fn children_start_in_order_and_stop_in_reverse() {
    let log = Log::default();
    let (supervisor, handle) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            name: "order".into(),
            options: SupervisorOptions::new(Strategy::RestForOne, 3, Duration::from_secs(5)),
            children: vec![
                child("a", Restart::Permanent, &log),
                child("b", Restart::Permanent, &log),
                child("c", Restart::Permanent, &log),
            ],
        },
    )
    .await
    .unwrap();
    supervisor.stop(None);
    handle.await.unwrap();
    assert_eq!(*log.lock().unwrap(), vec!["start a", "start b", "start c", "stop c", "stop b", "stop a"]);
}

#[tokio::test(start_paused = true)]
async fn a_nested_supervisor_escalation_is_a_restart_of_the_parent_child() {
    let log = Log::default();
    let inner = SupervisorArgs {
        name: "inner".into(),
        options: SupervisorOptions::new(Strategy::OneForOne, 0, Duration::from_secs(5)),
        children: vec![child("leaf", Restart::Permanent, &log)],
    };
    let outer = start(Strategy::OneForOne, vec![ChildSpec::new("inner", Restart::Permanent, Supervisor, inner)]).await;
    let inner_ref: ActorRef<SupervisorMsg> =
        ActorRef::from(ractor::call_t!(outer, SupervisorMsg::Child, 1_000, "inner".to_string()).unwrap().unwrap());
    child_ref(&inner_ref, "leaf").await.cast(TestMsg::Panic).unwrap();
    wait_for(&outer, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
    assert_eq!(log.lock().unwrap().iter().filter(|line| *line == "start leaf").count(), 2);
}

#[tokio::test(start_paused = true)]
async fn children_started_at_run_time_restart_like_the_others_and_stop_for_good() {
    let log = Log::default();
    let supervisor = start(Strategy::OneForOne, vec![child("a", Restart::Permanent, &log)]).await;
    let added = ractor::call_t!(supervisor, SupervisorMsg::StartChild, 1_000, child("b", Restart::Permanent, &log));
    assert_eq!(added.unwrap(), Ok(()));
    let again = ractor::call_t!(supervisor, SupervisorMsg::StartChild, 1_000, child("b", Restart::Permanent, &log));
    assert_eq!(again.unwrap(), Err(ChildError::Duplicate("b".into())));
    child_ref(&supervisor, "b").await.cast(TestMsg::Panic).unwrap();
    wait_for(&supervisor, |s| s.children.len() == 2 && s.children[1].restarts == 1 && s.children[1].alive).await;
    let stopped = ractor::call_t!(supervisor, SupervisorMsg::StopChild, 1_000, "b".to_string()).unwrap();
    assert_eq!(stopped, Ok(()));
    assert_eq!(status(&supervisor).await.children.iter().map(|c| c.id.as_str()).collect::<Vec<_>>(), vec!["a"]);
    let missing = ractor::call_t!(supervisor, SupervisorMsg::StopChild, 1_000, "b".to_string()).unwrap();
    assert_eq!(missing, Err(ChildError::NotFound("b".into())));
    assert_eq!(*log.lock().unwrap(), vec!["start a", "start b", "start b", "stop b"]);
}

#[tokio::test(start_paused = true)]
async fn the_control_status_reports_the_whole_tree_and_reaches_any_child() {
    let log = Log::default();
    let inner = SupervisorArgs {
        name: "inner".into(),
        options: SupervisorOptions::new(Strategy::OneForOne, 3, Duration::from_secs(5)),
        children: vec![child("leaf", Restart::Permanent, &log)],
    };
    let outer = start(
        Strategy::OneForOne,
        vec![child("a", Restart::Permanent, &log), ChildSpec::new("inner", Restart::Permanent, Supervisor, inner)],
    )
    .await;
    let tree = ractor::call_t!(outer, |reply| SupervisorMsg::Control(Control::Status(reply, soon())), 5_000).unwrap();
    let ids: Vec<&str> = tree.children.iter().map(|child| child.id.as_str()).collect();
    assert_eq!(ids, vec!["a", "inner"]);
    assert_eq!(tree.children[0].detail.as_deref(), Some("test child a"));
    assert_eq!(tree.children[1].children[0].id, "leaf");
    assert_eq!(tree.children[1].children[0].detail.as_deref(), Some("test child leaf"));
    let delivered = ractor::call_t!(
        outer,
        |reply| SupervisorMsg::ControlChild { id: "a".into(), control: Control::InjectPanic, reply },
        1_000
    )
    .unwrap();
    assert!(delivered);
    wait_for(&outer, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
    let nobody = ractor::call_t!(
        outer,
        |reply| SupervisorMsg::ControlChild { id: "ghost".into(), control: Control::InjectPanic, reply },
        1_000
    )
    .unwrap();
    assert!(!nobody);
}

fn pool(size: usize, restarts_max: u32, log: &Log) -> Pool {
    let log = log.clone();
    Pool::new("pool", size, Intensity { restarts_max, period: Duration::from_secs(5) }, move |index| {
        child(&format!("w{index}"), Restart::Transient, &log)
    })
}

async fn spawn_pool(pool: &Pool) -> (ActorRef<SupervisorMsg>, ractor::concurrency::JoinHandle<()>) {
    Actor::spawn(None, Supervisor, pool.supervisor_args()).await.expect("pool starts")
}

#[tokio::test(start_paused = true)]
async fn a_pool_names_its_workers_by_index_and_replaces_a_failed_one_alone() {
    let log = Log::default();
    let (workers, _) = spawn_pool(&pool(3, 3, &log)).await;
    let before = status(&workers).await;
    let names: Vec<&str> = before.children.iter().map(|child| child.id.as_str()).collect();
    assert_eq!(names, vec!["0", "1", "2"]);
    child_ref(&workers, "1").await.cast(TestMsg::Panic).unwrap();
    let after = wait_for(&workers, |s| s.children[1].restarts == 1 && s.children[1].alive).await;
    assert_eq!(ids(&after)[0], ids(&before)[0]);
    assert_eq!(ids(&after)[2], ids(&before)[2]);
    assert!(after.last_failure.as_deref().unwrap().starts_with("child 1: "), "{after:?}");
}

#[tokio::test(start_paused = true)]
async fn a_pool_fails_past_its_intensity_naming_the_last_failure() {
    let log = Log::default();
    let (parent, _) = Actor::spawn(None, Watcher, ()).await.unwrap();
    let workers = pool(2, 1, &log).spawn_linked(parent.get_cell()).await.unwrap();
    child_ref(&workers, "0").await.cast(TestMsg::Panic).unwrap();
    wait_for(&workers, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
    child_ref(&workers, "1").await.cast(TestMsg::Fail).unwrap();
    let exit = wait_exit(&parent).await;
    assert!(exit.contains("more than 1 restarts") && exit.contains("child 1: test child fails on purpose"), "{exit}");
}

#[tokio::test(start_paused = true)]
async fn a_pool_stops_normally_once_every_worker_ended_for_good() {
    let log = Log::default();
    let (parent, _) = Actor::spawn(None, Watcher, ()).await.unwrap();
    let workers = pool(2, 3, &log).spawn_linked(parent.get_cell()).await.unwrap();
    child_ref(&workers, "0").await.cast(TestMsg::Exit).unwrap();
    wait_for(&workers, |s| !s.children[0].alive).await;
    assert_eq!(workers.get_status(), ActorStatus::Running, "one worker still runs");
    child_ref(&workers, "1").await.cast(TestMsg::Exit).unwrap();
    assert_eq!(wait_exit(&parent).await, "terminated normally");
}

#[tokio::test(start_paused = true)]
async fn a_pool_grows_and_shrinks_at_run_time() {
    let log = Log::default();
    let spec = pool(2, 3, &log);
    let (workers, _) = spawn_pool(&spec).await;
    spec.resize(&workers, 4).await.unwrap();
    let names = |s: &SupervisorStatus| s.children.iter().map(|child| child.id.clone()).collect::<Vec<_>>();
    assert_eq!(names(&status(&workers).await), vec!["0", "1", "2", "3"]);
    spec.resize(&workers, 1).await.unwrap();
    assert_eq!(names(&status(&workers).await), vec!["0"]);
    assert_eq!(
        log.lock().unwrap().iter().filter(|line| line.starts_with("stop")).cloned().collect::<Vec<_>>(),
        vec!["stop w3", "stop w2", "stop w1"]
    );
    workers.stop(None);
}

#[tokio::test(start_paused = true)]
async fn a_child_without_a_control_message_is_listed_and_a_panic_request_kills_it() {
    let log = Log::default();
    let spawn: StartFn = {
        let log = log.clone();
        std::sync::Arc::new(move |supervisor: ractor::ActorCell| {
            let args = TestChildArgs { name: "opaque".into(), log: log.clone() };
            Box::pin(async move { Ok(Actor::spawn_linked(None, TestChild, args, supervisor).await?.0.get_cell()) })
        })
    };
    let supervisor =
        start(Strategy::OneForOne, vec![ChildSpec::uncontrolled("opaque", Restart::Permanent, spawn)]).await;
    let tree =
        ractor::call_t!(supervisor, |reply| SupervisorMsg::Control(Control::Status(reply, soon())), 5_000).unwrap();
    assert_eq!((tree.children[0].id.as_str(), tree.children[0].alive), ("opaque", true));
    assert_eq!(tree.children[0].detail, None);
    let delivered = ractor::call_t!(
        supervisor,
        |reply| SupervisorMsg::ControlChild { id: "opaque".into(), control: Control::InjectPanic, reply },
        1_000
    )
    .unwrap();
    assert!(delivered);
    wait_for(&supervisor, |s| s.children[0].restarts == 1 && s.children[0].alive).await;
}

/// A parent that records how its linked child ended: "terminated normally" or the failure's text.
struct Watcher;

enum WatcherMsg {
    Exit(RpcReplyPort<Option<String>>),
}

impl ractor::Message for WatcherMsg {}

impl Actor for Watcher {
    type Msg = WatcherMsg;
    type State = Option<String>;
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<WatcherMsg>, _: ()) -> Result<Option<String>, ActorProcessingErr> {
        Ok(None)
    }

    async fn handle(
        &self,
        _: ActorRef<WatcherMsg>,
        WatcherMsg::Exit(reply): WatcherMsg,
        exit: &mut Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        let _ = reply.send(exit.clone());
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _: ActorRef<WatcherMsg>,
        event: ractor::SupervisionEvent,
        exit: &mut Option<String>,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            ractor::SupervisionEvent::ActorTerminated(_, _, None) => *exit = Some("terminated normally".into()),
            ractor::SupervisionEvent::ActorTerminated(_, _, Some(reason)) => *exit = Some(reason),
            ractor::SupervisionEvent::ActorFailed(_, error) => *exit = Some(error.to_string()),
            _ => {}
        }
        Ok(())
    }
}

/// Waits (ten simulated seconds at most) until the watcher saw its child end.
async fn wait_exit(watcher: &ActorRef<WatcherMsg>) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(exit) = ractor::call_t!(watcher, WatcherMsg::Exit, 1_000).unwrap() {
            return exit;
        }
        assert!(tokio::time::Instant::now() < deadline, "the child never ended");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A status deadline far enough away that only the tree's own timeouts matter.
fn soon() -> tokio::time::Instant {
    tokio::time::Instant::now() + Duration::from_secs(30)
}

async fn tree(supervisor: &ActorRef<SupervisorMsg>) -> ActorDetail {
    ractor::call_t!(supervisor, |reply| SupervisorMsg::Control(Control::Status(reply, soon())), 10_000).unwrap()
}

#[tokio::test(start_paused = true)]
async fn a_stuck_child_shows_its_queue_and_time_in_the_handler_and_the_others_still_answer() {
    let log = Log::default();
    let supervisor =
        start(Strategy::OneForOne, vec![child("a", Restart::Permanent, &log), child("b", Restart::Permanent, &log)])
            .await;
    let a = child_ref(&supervisor, "a").await;
    let release = Arc::new(tokio::sync::Notify::new());
    a.cast(TestMsg::Block(release.clone())).unwrap();
    for _ in 0..3 {
        a.cast(TestMsg::Nothing).unwrap();
    }
    tokio::time::sleep(Duration::from_millis(500)).await;

    let started = tokio::time::Instant::now();
    let stuck = tree(&supervisor).await;
    // The stuck child cannot answer: it costs the report one status timeout, and its runtime counts still show.
    assert!(started.elapsed() < Duration::from_millis(control::CONTROL_STATUS_TIMEOUT_MS + 500));
    let (a_node, b_node) = (&stuck.children[0], &stuck.children[1]);
    assert_eq!(a_node.detail, None, "a stuck child says nothing itself");
    let mailbox = a_node.mailbox.clone().expect("a running child has a mailbox");
    // The three waiting messages and the status question behind them.
    assert_eq!((mailbox.queued, mailbox.handled), (4, 0), "{mailbox:?}");
    let busy = mailbox.busy_ms.expect("a is in its handler");
    assert!(busy >= 500 + control::CONTROL_STATUS_TIMEOUT_MS, "busy for {busy} ms");
    assert_eq!(b_node.detail.as_deref(), Some("test child b"));
    assert_eq!(b_node.mailbox.as_ref().map(|mailbox| mailbox.queued), Some(0));
    // Stuck longer than an answer may take: not asked again, so watching it does not grow its queue.
    let again = tree(&supervisor).await;
    assert_eq!(again.children[0].mailbox.as_ref().map(|mailbox| mailbox.queued), Some(4));

    release.notify_one();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let freed = tree(&supervisor).await;
    let mailbox = freed.children[0].mailbox.clone().unwrap();
    assert_eq!(mailbox.queued, 0, "{mailbox:?}");
    // The blocking message, the three behind it, the timed-out status question and the answered one (its handler
    // may still be returning when the supervisor reads the counts).
    assert!(mailbox.handled >= 5, "{mailbox:?}");
    assert_eq!(freed.children[0].detail.as_deref(), Some("test child a"));
}

#[tokio::test(start_paused = true)]
async fn a_restarted_child_shows_why_it_last_failed_and_how_long_ago() {
    let log = Log::default();
    let supervisor = start(Strategy::OneForOne, vec![child("a", Restart::Permanent, &log)]).await;
    assert_eq!(tree(&supervisor).await.children[0].last_failure, None);
    child_ref(&supervisor, "a").await.cast(TestMsg::Panic).unwrap();
    wait_for(&supervisor, |status| status.children[0].restarts == 1 && status.children[0].alive).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let node = tree(&supervisor).await.children.remove(0);
    assert_eq!(node.restarts, 1);
    let failure = node.last_failure.expect("the panic is remembered");
    assert!(failure.reason.contains("test child panics on purpose"), "{failure:?}");
    assert!(failure.ago_ms.is_some_and(|ago| ago >= 3_000), "{failure:?}");
    // A fresh instance counts its own messages.
    assert_eq!(node.mailbox.map(|mailbox| mailbox.queued), Some(0));
}

#[tokio::test(start_paused = true)]
async fn a_stuck_actor_deep_in_the_tree_costs_its_own_branch_not_its_ancestors_answers() {
    let log = Log::default();
    let inner = SupervisorArgs {
        name: "inner".into(),
        options: SupervisorOptions::new(Strategy::OneForOne, 3, Duration::from_secs(5)),
        children: vec![child("stuck", Restart::Permanent, &log), child("fine", Restart::Permanent, &log)],
    };
    let outer = start(
        Strategy::OneForOne,
        vec![ChildSpec::new("inner", Restart::Permanent, Supervisor, inner), child("beside", Restart::Permanent, &log)],
    )
    .await;
    let inner_ref: ActorRef<SupervisorMsg> =
        ActorRef::from(ractor::call_t!(outer, SupervisorMsg::Child, 1_000, "inner".to_string()).unwrap().unwrap());
    let stuck = ActorRef::<TestMsg>::from(
        ractor::call_t!(inner_ref, SupervisorMsg::Child, 1_000, "stuck".to_string()).unwrap().unwrap(),
    );
    stuck.cast(TestMsg::Block(Arc::new(tokio::sync::Notify::new()))).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    let started = tokio::time::Instant::now();
    let answer = tree(&outer).await;
    assert!(started.elapsed() <= Duration::from_millis(control::CONTROL_STATUS_TIMEOUT_MS), "{:?}", started.elapsed());
    let inner = &answer.children[0];
    assert!(inner.detail.as_deref().is_some_and(|detail| detail.contains("one_for_one")), "{inner:?}");
    let ids: Vec<&str> = inner.children.iter().map(|child| child.id.as_str()).collect();
    assert_eq!(ids, ["stuck", "fine"], "the inner supervisor answered in time: {inner:?}");
    assert!(inner.children[0].mailbox.as_ref().is_some_and(|mailbox| mailbox.busy_ms.is_some()));
    assert_eq!(inner.children[1].detail.as_deref(), Some("test child fine"));
    assert_eq!(answer.children[1].detail.as_deref(), Some("test child beside"));
}
