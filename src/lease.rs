//! Which watchers this instance runs when several share a Postgres store: the lease task
//! (register, renew, spread, take over, hand over) and the pure plan behind it.
//!
//! Every instance computes the same plan from the same facts (the live instances and the
//! watchers each has configured): a watcher belongs to the live instance that defines it
//! with the highest rendezvous hash of (instance, watcher). An instance takes the leases
//! of its watchers that nobody holds in force, and hands over, a bounded number per
//! round, those that now belong to another. The store is the only judge: a lease is held
//! when the store says so, and every write of a watcher carries its lease (a
//! [`Fence`]), so an instance that believes it holds a lease it lost writes nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use crate::state::{Fence, Instance, Lease, Peer, Store, StoreError};
use crate::telemetry::Telemetry;

/// The longest pause between two looks at the instances and leases: how long a lease
/// that was handed over, or that expired, waits at most before its new owner takes it.
const ROUND: Duration = Duration::from_secs(1);

/// Leases taken by one statement.
const TAKES_PER_STATEMENT: usize = 100;

/// Leases one instance hands over per round when the spread changes (an instance
/// joined): a thousand watchers move in seconds, not in one burst of restarts.
pub const HANDOVERS_PER_ROUND: usize = 50;

/// What the lease task asks of the supervisor.
#[derive(Debug)]
pub enum Order {
    /// Run watcher `id` under `fence` (restart it if it runs under an earlier one).
    Start {
        /// `namespace/name`.
        id: String,
        /// The lease it runs under.
        fence: Fence,
    },
    /// Stop watcher `id`; `done` (when given) is told once its task has ended, after
    /// which the lease is released for the next owner.
    Stop {
        /// `namespace/name`.
        id: String,
        /// Told when the watcher's task has ended.
        done: Option<oneshot::Sender<()>>,
    },
}

/// This instance's registration: `host:pid:start` makes it unique per run.
pub fn this_instance(watchers: Vec<String>) -> Instance {
    let host = hostname();
    let pid = std::process::id();
    let started = chrono::Utc::now().timestamp_millis();
    Instance { id: format!("{host}:{pid}:{started:x}"), host, pid, watchers }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

/// The owner of every watcher whose lease is in force, by `namespace/name` (empty for a
/// store one daemon holds): what `highwater watchers` and `status` show.
pub async fn owners(store: &dyn Store) -> Result<BTreeMap<String, String>, crate::state::StoreError> {
    let Some(leases) = store.leases() else { return Ok(BTreeMap::new()) };
    Ok(leases.list_leases().await?.into_iter().filter(|l| l.live).map(|l| (l.watcher, l.owner)).collect())
}

/// An instance id as a table shows it: `host:pid` (the start time only tells runs of
/// one pid apart).
pub fn short_owner(id: &str) -> &str {
    id.rsplit_once(':').map_or(id, |(rest, _)| rest)
}

/// The live instance that watcher `id` belongs to: among the peers that define it, the
/// one with the highest hash of (instance, watcher). When an instance leaves, only its
/// watchers move; when one joins, it takes about its share from each.
pub fn owner_of<'p>(id: &str, peers: &'p [Peer]) -> Option<&'p str> {
    peers
        .iter()
        .filter(|p| p.watchers.iter().any(|w| w == id))
        .max_by_key(|p| (score(&p.id, id), p.id.as_str()))
        .map(|p| p.id.as_str())
}

fn score(instance: &str, watcher: &str) -> [u8; 8] {
    let mut hash = Sha256::new();
    hash.update(instance.as_bytes());
    hash.update([0]);
    hash.update(watcher.as_bytes());
    let digest = hash.finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    first
}

/// What one round decides, from the facts the store gave.
#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Watchers to take: they belong here and nobody holds their lease in force.
    pub take: Vec<String>,
    /// Watchers held here to hand over (they belong to another live instance, or are no
    /// longer configured here), at most [`HANDOVERS_PER_ROUND`] of the first kind.
    pub give: Vec<String>,
}

/// The round's plan for instance `me`, which holds `held` (some of them already being
/// handed over: `handing`) and defines `defined`, given the live `peers` and every
/// `leases` row.
pub fn plan(
    me: &str,
    defined: &BTreeSet<String>,
    held: &BTreeSet<String>,
    handing: &BTreeSet<String>,
    peers: &[Peer],
    leases: &[Lease],
) -> Plan {
    let in_force: BTreeSet<&str> = leases.iter().filter(|l| l.live).map(|l| l.watcher.as_str()).collect();
    let mut plan = Plan::default();
    for id in defined {
        if !held.contains(id) && !in_force.contains(id.as_str()) && owner_of(id, peers) == Some(me) {
            plan.take.push(id.clone());
        }
    }
    let mut moving = 0;
    for id in held.difference(handing) {
        if !defined.contains(id) {
            plan.give.push(id.clone());
        } else if moving < HANDOVERS_PER_ROUND && owner_of(id, peers).is_some_and(|o| o != me) {
            plan.give.push(id.clone());
            moving += 1;
        }
    }
    plan
}

/// The lease task of one instance.
pub struct Coordinator {
    store: Arc<dyn Store>,
    me: Instance,
    /// The watchers configured here (replaced by a reload).
    defined: watch::Receiver<BTreeSet<String>>,
    orders: mpsc::UnboundedSender<Order>,
    telemetry: Arc<Telemetry>,
    /// Leases held, by watcher: their epochs.
    held: BTreeMap<String, i64>,
    /// Leases being handed over: the epoch, and the word that the watcher has stopped.
    handing: BTreeMap<String, (i64, oneshot::Receiver<()>)>,
    /// When the last renewal that went through was sent: the leases are in force for the
    /// ttl after it, by the store's clock, and for no longer as far as this instance
    /// can know.
    renewed: Option<Instant>,
    /// When the last renewal was tried.
    renew_tried: Option<Instant>,
    /// The store's `lease_ttl`.
    ttl: Duration,
    /// The pause between rounds: [`ROUND`], or a third of a shorter ttl.
    round: Duration,
}

impl Coordinator {
    /// The lease task for `me` over `store` (a store with leases).
    pub fn new(
        store: Arc<dyn Store>,
        me: Instance,
        defined: watch::Receiver<BTreeSet<String>>,
        orders: mpsc::UnboundedSender<Order>,
        telemetry: Arc<Telemetry>,
    ) -> Self {
        telemetry.leasing.store(true, Ordering::Relaxed);
        let ttl = store.leases().map_or(Duration::from_secs(15), |l| l.ttl());
        Coordinator {
            ttl,
            round: ROUND.min(ttl / 3),
            store,
            me,
            defined,
            orders,
            telemetry,
            held: BTreeMap::new(),
            handing: BTreeMap::new(),
            renewed: None,
            renew_tried: None,
        }
    }

    /// This instance's id.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// Runs rounds until `stop` fires (after the watchers have stopped), then gives up
    /// every lease at once and deregisters: a graceful stop hands over without waiting
    /// for the ttl. Stops taking new leases as soon as `draining` fires.
    pub async fn run(mut self, draining: CancellationToken, stop: CancellationToken) {
        let mut tick = tokio::time::interval(self.round);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => break,
                _ = tick.tick() => self.round_once(draining.is_cancelled()).await,
            }
        }
        let Some(leases) = self.store.leases() else { return };
        match tokio::time::timeout(Duration::from_secs(10), leases.leave(&self.me.id)).await {
            Ok(Ok(())) => {
                let n = self.held.len() + self.handing.len();
                self.telemetry.lease_handovers.fetch_add(n as u64, Ordering::Relaxed);
                tracing::info!(leases = n, instance = %self.me.id, "Handed every lease over.");
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "Cannot hand the leases over; they pass on when they expire.")
            }
            Err(_) => tracing::warn!("The store did not answer; the leases pass on when they expire."),
        }
        self.telemetry.leases_held.store(0, Ordering::Relaxed);
    }

    /// One round: renew (every third of the ttl), stop what could not be renewed in
    /// time, hand over what stopped, register, take and give.
    async fn round_once(&mut self, draining: bool) {
        let store = Arc::clone(&self.store);
        let Some(leases) = store.leases() else { return };
        let ttl = self.ttl;
        // The store gives each call a round at most; this is a backstop. A store that
        // stopped answering (a cut network) must not hold up the check below.
        let limit = 2 * self.round;
        let now = Instant::now();
        if self.renew_tried.is_none_or(|t| now.duration_since(t) >= ttl / 3) {
            self.renew_tried = Some(now);
            match bounded(limit, leases.renew(&self.me.id)).await {
                Ok(renewed) => {
                    self.renewed = Some(now);
                    if self.telemetry.store_lost.swap(false, Ordering::Relaxed) {
                        tracing::info!(store_lost = false, "The state store answers again; taking leases.");
                    }
                    let renewed: BTreeMap<String, i64> = renewed.into_iter().collect();
                    let lost: Vec<String> = self
                        .held
                        .iter()
                        .filter(|(id, epoch)| renewed.get(*id) != Some(epoch))
                        .map(|(id, _)| id.clone())
                        .collect();
                    for id in lost {
                        tracing::warn!(watcher = %id, lifecycle = "lease lost", "Lease lost (it expired or another instance took it); stopping the watcher.");
                        self.lose(&id);
                    }
                    // Held in the store but not known here: a take whose answer was
                    // cut off by the time limit. Given back; taken properly next round.
                    for (id, epoch) in renewed {
                        if !self.held.contains_key(&id)
                            && !self.handing.contains_key(&id)
                            && let Some((namespace, name)) = id.split_once('/')
                        {
                            let _ =
                                bounded(limit, leases.release(&self.me.id, (namespace, name), epoch)).await;
                        }
                    }
                }
                Err(e) => {
                    // Tried again next round.
                    self.renew_tried = None;
                    self.telemetry.lease_renew_failures.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(error = %e, held = self.held.len(), "Cannot renew the leases.");
                }
            }
        }
        // Past the ttl after the last renewal that went through, the leases may be
        // another instance's: stop every watcher (their writes are refused anyway).
        // Two rounds early (the renewal may take one), so that they stop within the ttl.
        let deadline = ttl.saturating_sub(2 * self.round);
        if !self.held.is_empty() && self.renewed.is_some_and(|t| t.elapsed() >= deadline) {
            tracing::error!(
                store_lost = true,
                held = self.held.len(),
                "The leases could not be renewed within lease_ttl; stopping every watcher until the state store answers."
            );
            self.telemetry.store_lost.store(true, Ordering::Relaxed);
            for id in self.held.keys().cloned().collect::<Vec<_>>() {
                self.lose(&id);
            }
        }
        self.release_stopped(leases).await;
        let defined = self.defined.borrow().clone();
        self.me.watchers = defined.iter().cloned().collect();
        let peers = match bounded(limit, leases.heartbeat(&self.me)).await {
            Ok(peers) => peers,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot register with the state store.");
                self.publish();
                return;
            }
        };
        if self.telemetry.store_lost.load(Ordering::Relaxed) {
            // Renewed again first: until then this instance cannot know what it holds.
            self.publish();
            return;
        }
        let all = match bounded(limit, leases.list_leases()).await {
            Ok(all) => all,
            Err(e) => {
                tracing::debug!(error = %e, "Cannot read the leases.");
                self.publish();
                return;
            }
        };
        let held: BTreeSet<String> = self.held.keys().cloned().collect();
        let handing: BTreeSet<String> = self.handing.keys().cloned().collect();
        let plan = plan(&self.me.id, &defined, &held, &handing, &peers, &all);
        for id in plan.give {
            if let Some(epoch) = self.held.remove(&id) {
                let (done, stopped) = oneshot::channel();
                tracing::info!(watcher = %id, lifecycle = "handing over", "Handing the watcher over to another instance.");
                let _ = self.orders.send(Order::Stop { id: id.clone(), done: Some(done) });
                self.handing.insert(id, (epoch, stopped));
            }
        }
        if !draining {
            // In chunks, each one statement: a few hundred leases of an instance that
            // died are taken in milliseconds. A chunk that waits on a write in flight
            // (or fails) leaves the rest to the next round.
            for chunk in plan.take.chunks(TAKES_PER_STATEMENT) {
                let wanted: Vec<(String, String)> = chunk
                    .iter()
                    .filter_map(|id| id.split_once('/'))
                    .map(|(namespace, name)| (namespace.to_string(), name.to_string()))
                    .collect();
                let taken = match bounded(limit, leases.acquire_many(&self.me.id, &wanted)).await {
                    Ok(taken) => taken,
                    Err(e) => {
                        tracing::debug!(error = %e, "Cannot take leases.");
                        break;
                    }
                };
                for (id, epoch) in taken {
                    tracing::info!(watcher = %id, epoch, lifecycle = "lease taken", "Took the watcher's lease.");
                    self.telemetry.lease_acquisitions.fetch_add(1, Ordering::Relaxed);
                    self.held.insert(id.clone(), epoch);
                    let fence = Fence { owner: self.me.id.clone(), epoch };
                    let _ = self.orders.send(Order::Start { id, fence });
                }
            }
        }
        self.publish();
    }

    /// A lease this instance no longer holds: its watcher stops (its writes are refused
    /// already).
    fn lose(&mut self, id: &str) {
        if self.held.remove(id).is_some() {
            self.telemetry.lease_handovers.fetch_add(1, Ordering::Relaxed);
            let _ = self.orders.send(Order::Stop { id: id.to_string(), done: None });
        }
    }

    /// Releases the leases of watchers handed over whose tasks have ended.
    async fn release_stopped(&mut self, leases: &dyn crate::state::Leases) {
        let stopped: Vec<String> = self
            .handing
            .iter_mut()
            .filter_map(|(id, (_, rx))| {
                (!matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty))).then(|| id.clone())
            })
            .collect();
        for id in stopped {
            let Some((epoch, _)) = self.handing.get(&id) else { continue };
            let Some((namespace, name)) = id.split_once('/') else { continue };
            match bounded(2 * self.round, leases.release(&self.me.id, (namespace, name), *epoch)).await {
                Ok(()) => {
                    self.handing.remove(&id);
                    self.telemetry.lease_handovers.fetch_add(1, Ordering::Relaxed);
                    tracing::info!(watcher = %id, lifecycle = "handed over", "Released the watcher's lease.");
                }
                Err(e) => {
                    // Tried again next round; at worst the lease expires.
                    tracing::debug!(watcher = %id, error = %e, "Cannot release the lease.");
                    break;
                }
            }
        }
    }

    fn publish(&self) {
        self.telemetry.leases_held.store(self.held.len() as u64, Ordering::Relaxed);
    }
}

/// A call to the store, given `limit` to answer.
async fn bounded<T>(
    limit: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable {
            location: "the shared store".into(),
            message: format!("no answer within {}ms", limit.as_millis()),
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(id: &str, watchers: &[&str]) -> Peer {
        Peer { id: id.into(), watchers: watchers.iter().map(|w| w.to_string()).collect() }
    }

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("ns/w{i}")).collect()
    }

    fn lease(watcher: &str, owner: &str, live: bool) -> Lease {
        Lease { watcher: watcher.into(), owner: owner.into(), epoch: 1, live }
    }

    #[test]
    fn watchers_spread_evenly_and_only_a_leaving_instances_share_moves() {
        let all = ids(3000);
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let three = [peer("a", &names), peer("b", &names), peer("c", &names)];
        let mut count: BTreeMap<&str, usize> = BTreeMap::new();
        for id in &all {
            *count.entry(owner_of(id, &three).unwrap()).or_default() += 1;
        }
        for (instance, n) in &count {
            assert!((850..=1150).contains(n), "{instance}: {n}");
        }
        let two = [peer("a", &names), peer("b", &names)];
        for id in &all {
            let before = owner_of(id, &three).unwrap();
            let after = owner_of(id, &two).unwrap();
            if before != "c" {
                assert_eq!(before, after, "{id} moved although its owner stayed");
            }
        }
    }

    #[test]
    fn a_watcher_goes_only_to_an_instance_that_defines_it() {
        let peers = [peer("a", &["ns/x"]), peer("b", &["ns/x", "ns/y"])];
        assert_eq!(owner_of("ns/y", &peers), Some("b"));
        assert_eq!(owner_of("ns/z", &peers), None);
    }

    #[test]
    fn a_plan_takes_free_leases_of_its_own_and_waits_for_held_ones() {
        let all = ids(40);
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let peers = [peer("a", &names), peer("b", &names)];
        let mine: Vec<&String> = all.iter().filter(|id| owner_of(id, &peers) == Some("a")).collect();
        let defined: BTreeSet<String> = all.iter().cloned().collect();
        // b still holds one of a's watchers in force; another of a's expired.
        let leases = [lease(mine[0], "b", true), lease(mine[1], "b", false)];
        let p = plan("a", &defined, &BTreeSet::new(), &BTreeSet::new(), &peers, &leases);
        assert!(!p.take.contains(mine[0]));
        assert!(p.take.contains(mine[1]));
        assert_eq!(p.take.len(), mine.len() - 1);
        assert!(p.give.is_empty());
    }

    #[test]
    fn a_plan_hands_over_a_bounded_number_and_every_removed_watcher() {
        let all = ids(1000);
        let names: Vec<&str> = all.iter().map(String::as_str).collect();
        let peers = [peer("a", &names), peer("b", &names)];
        let held: BTreeSet<String> = all.iter().cloned().collect();
        let mut defined = held.clone();
        defined.remove("ns/w0");
        let p = plan("a", &defined, &held, &BTreeSet::new(), &peers, &[]);
        assert!(p.give.contains(&"ns/w0".to_string()));
        assert!(p.give.len() <= HANDOVERS_PER_ROUND + 1, "{}", p.give.len());
        assert!(p.give.iter().filter(|id| *id != "ns/w0").all(|id| owner_of(id, &peers) == Some("b")));
        // What is being handed over already is not handed over twice.
        let handing: BTreeSet<String> = p.give.iter().cloned().collect();
        let again = plan("a", &defined, &held, &handing, &peers, &[]);
        assert!(again.give.iter().all(|id| !handing.contains(id)));
    }
}
