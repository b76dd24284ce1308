//! Which bytes of the file are done, which are being fetched by whom, and what an idle
//! connection should fetch next.
//!
//! This is the downloader's bookkeeping without I/O or clocks: workers ask [`Plan::assign`] for a
//! task, report bytes with [`Plan::commit`] after they are on disk, and the caller drops a server
//! with [`Plan::drop_server`], after which the unfinished part of its tasks is free again from the
//! exact byte where it stopped. When nothing is free, an idle connection splits the largest task
//! in two or, near the end, fetches the same remaining bytes as a slower holder (endgame), so
//! one slow link cannot hold the finish. It must never mark a byte done that was not committed.

use std::collections::BTreeMap;

/// Index of a server in the download's server list.
pub type ServerId = usize;
/// Identifies a task for its whole life.
pub type TaskId = u64;

/// Half-open byte ranges `[start, end)`, kept sorted, disjoint and merged.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn new() -> Self {
        Self(Vec::new())
    }

    /// Builds a set from any ranges (overlapping, unsorted, empty ones ignored).
    pub fn from_ranges(ranges: impl IntoIterator<Item = (u64, u64)>) -> Self {
        let mut r = Ranges::new();
        for (s, e) in ranges {
            r.insert(s, e);
        }
        r
    }

    pub fn as_slice(&self) -> &[(u64, u64)] {
        &self.0
    }

    /// Adds `[start, end)`.
    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        // First range that ends at or after `start` (touching ranges merge).
        let i = self.0.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.0.len() && self.0[j].0 <= e {
            s = s.min(self.0[j].0);
            e = e.max(self.0[j].1);
            j += 1;
        }
        self.0.splice(i..j, [(s, e)]);
    }

    /// Removes `[start, end)`.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        for &(s, e) in &self.0 {
            if e <= start || s >= end {
                out.push((s, e));
                continue;
            }
            if s < start {
                out.push((s, start));
            }
            if e > end {
                out.push((end, e));
            }
        }
        self.0 = out;
    }

    /// Whether every byte of `[start, end)` is in the set (true for an empty range).
    pub fn covers(&self, start: u64, end: u64) -> bool {
        if start >= end {
            return true;
        }
        let i = self.0.partition_point(|&(_, e)| e <= start);
        self.0.get(i).is_some_and(|&(s, e)| s <= start && e >= end)
    }

    /// Total bytes in the set.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|&(s, e)| e - s).sum()
    }

    /// The parts of `[0, size)` not in the set, in order.
    pub fn gaps(&self, size: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        let mut at = 0;
        for &(s, e) in &self.0 {
            if s >= size {
                break;
            }
            if s > at {
                out.push((at, s));
            }
            at = at.max(e);
        }
        if at < size {
            out.push((at, size));
        }
        out
    }

    /// Where the run of done bytes starting at `pos` ends (`pos` itself when `pos` is not done).
    pub fn run_end(&self, pos: u64) -> u64 {
        let i = self.0.partition_point(|&(_, e)| e <= pos);
        match self.0.get(i) {
            Some(&(s, e)) if s <= pos => e,
            _ => pos,
        }
    }
}

/// One connection's current job: fetch `[pos, end)`; `start` is where its request began.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Task {
    pub id: TaskId,
    pub server: ServerId,
    /// First byte of the request that was (or will be) sent for this task.
    pub start: u64,
    /// Next byte this task will write.
    pub pos: u64,
    /// End (exclusive). May shrink while the task runs, when another connection takes its tail.
    pub end: u64,
    /// The task this one duplicates near the end of the download, if it is such a racer.
    pub races: Option<TaskId>,
}

impl Task {
    pub fn remaining(&self) -> u64 {
        self.end.saturating_sub(self.pos)
    }
}

/// What a worker learns when it commits bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Keep reading; the task now ends at `end`.
    Continue { end: u64 },
    /// Every byte of the task is done (by this worker or a racer). Stop and ask for another.
    Finished,
    /// The task no longer exists (its server was dropped). Stop.
    Gone,
}

/// Tuning of [`Plan::assign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SplitRules {
    /// A running task is split only when each half would be at least this long: below it, a
    /// new request costs more than it saves, and the endgame duplicate takes over instead.
    pub min_split: u64,
    /// Whether an idle connection may duplicate another server's last bytes (endgame).
    pub endgame: bool,
}

/// Default [`SplitRules::min_split`]: 1 MiB is about 80 ms at 100 Mbit/s, several round trips'
/// worth, so a split always pays for its extra request.
pub const DEFAULT_MIN_SPLIT: u64 = 1 << 20;

impl Default for SplitRules {
    fn default() -> Self {
        Self {
            min_split: DEFAULT_MIN_SPLIT,
            endgame: true,
        }
    }
}

/// The download's byte bookkeeping.
#[derive(Debug, Clone)]
pub struct Plan {
    size: u64,
    done: Ranges,
    tasks: BTreeMap<TaskId, Task>,
    next_id: TaskId,
    rules: SplitRules,
}

impl Plan {
    /// A plan for a file of `size` bytes of which `done` are already on disk (a resumed download).
    pub fn new(size: u64, done: Ranges, rules: SplitRules) -> Self {
        let mut done = done;
        done.remove(size, u64::MAX);
        Self {
            size,
            done,
            tasks: BTreeMap::new(),
            next_id: 1,
            rules,
        }
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn done(&self) -> &Ranges {
        &self.done
    }

    pub fn done_bytes(&self) -> u64 {
        self.done.total()
    }

    pub fn is_complete(&self) -> bool {
        self.done.covers(0, self.size)
    }

    pub fn task(&self, id: TaskId) -> Option<&Task> {
        self.tasks.get(&id)
    }

    pub fn tasks(&self) -> impl Iterator<Item = &Task> {
        self.tasks.values()
    }

    /// Bytes neither done nor claimed by a running task.
    pub fn free(&self) -> Vec<(u64, u64)> {
        let mut taken = self.done.clone();
        for t in self.tasks.values() {
            taken.insert(t.pos, t.end);
        }
        taken.gaps(self.size)
    }

    /// Forgets done bytes (a piece that failed its hash), so they are fetched again.
    pub fn undo(&mut self, start: u64, end: u64) {
        self.done.remove(start, end);
    }

    fn add(&mut self, server: ServerId, start: u64, end: u64, races: Option<TaskId>) -> Task {
        let t = Task {
            id: self.next_id,
            server,
            start,
            pos: start,
            end,
            races,
        };
        self.next_id += 1;
        self.tasks.insert(t.id, t);
        t
    }

    /// The next job for an idle connection to `server`, at most `chunk` bytes when it is new
    /// work. In order: the lowest free bytes; else the back half of the running task (of another
    /// connection) with most remaining, when both halves reach `min_split`; else, in the endgame,
    /// a duplicate of the remaining bytes of another server's task that has no duplicate yet,
    /// chosen by `prefer` (higher first; the caller passes its estimate of how much sooner this
    /// server would finish). `None` when there is nothing useful to do.
    pub fn assign(&mut self, server: ServerId, chunk: u64, prefer: impl Fn(&Task) -> Option<i64>) -> Option<Task> {
        let chunk = chunk.max(1);
        if let Some(&(s, e)) = self.free().first() {
            return Some(self.add(server, s, e.min(s.saturating_add(chunk)), None));
        }
        // Split: the task with most remaining, when both halves are worth a request.
        let split = self
            .tasks
            .values()
            .filter(|t| t.races.is_none() && t.remaining() >= 2 * self.rules.min_split.max(1))
            .max_by_key(|t| (t.remaining(), std::cmp::Reverse(t.id)))
            .map(|t| (t.id, t.pos + t.remaining() / 2));
        if let Some((id, mid)) = split {
            let end = self.tasks.get(&id).map(|t| t.end)?;
            if let Some(t) = self.tasks.get_mut(&id) {
                t.end = mid;
            }
            return Some(self.add(server, mid, end, None));
        }
        if !self.rules.endgame {
            return None;
        }
        let raced: Vec<TaskId> = self.tasks.values().filter_map(|t| t.races).collect();
        let target = self
            .tasks
            .values()
            .filter(|t| t.server != server && t.races.is_none() && !raced.contains(&t.id))
            .filter(|t| self.done.run_end(t.pos) < t.end)
            .filter_map(|t| prefer(t).map(|p| (p, t.remaining(), t.id)))
            .max_by_key(|&(p, rem, id)| (p, rem, std::cmp::Reverse(id)))
            .map(|(_, _, id)| id)?;
        let t = *self.tasks.get(&target)?;
        let start = self.done.run_end(t.pos);
        Some(self.add(server, start, t.end, Some(t.id)))
    }

    /// Which of `n` bytes received at stream position `at` (the byte offset in the file the
    /// connection has reached) this task still needs: `Some((skip, len))` means write
    /// `buf[skip..skip + len]` at file offset `at + skip`, then [`Plan::commit`] `len`. Bytes
    /// before the task's position (written meanwhile by a racer) and past its end (after a
    /// split) are not needed. `None` when the task is gone.
    pub fn window(&self, id: TaskId, at: u64, n: u64) -> Option<(u64, u64)> {
        let t = self.tasks.get(&id)?;
        let from = self.done.run_end(t.pos.max(at));
        let to = t.end.min(at.saturating_add(n));
        if to <= from {
            return Some((n.min(from.saturating_sub(at)), 0));
        }
        Some((from - at, to - from))
    }

    /// Records that the `n` bytes at file offset `at` the task wrote (as [`Plan::window`] said)
    /// are on disk.
    pub fn commit(&mut self, id: TaskId, at: u64, n: u64) -> Progress {
        let Some(t) = self.tasks.get_mut(&id) else {
            return Progress::Gone;
        };
        t.pos = self.done.run_end(t.pos).clamp(t.pos, t.end);
        let end = at.saturating_add(n).min(t.end);
        if at <= t.pos && end > t.pos {
            self.done.insert(t.pos, end);
            t.pos = end;
        }
        // Skip what a racer (or the raced task) already wrote.
        let (pos, end) = (t.pos, t.end);
        let pos = self.done.run_end(pos).min(end).max(pos);
        if let Some(t) = self.tasks.get_mut(&id) {
            t.pos = pos;
        }
        if pos >= end {
            self.finish(id);
            return Progress::Finished;
        }
        Progress::Continue { end }
    }

    /// Removes a task whose connection ended; its unfinished bytes are free again.
    pub fn release(&mut self, id: TaskId) {
        self.tasks.remove(&id);
        for t in self.tasks.values_mut() {
            if t.races == Some(id) {
                t.races = None;
            }
        }
    }

    fn finish(&mut self, id: TaskId) {
        self.release(id);
        // Tasks now fully covered (the duplicate of one that finished) are finished too.
        let covered: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| self.done.covers(t.pos, t.end))
            .map(|t| t.id)
            .collect();
        for c in covered {
            self.release(c);
        }
    }

    /// Removes every task of `server`; returns their ids. Their unfinished bytes are free again
    /// from the exact byte each had reached.
    pub fn drop_server(&mut self, server: ServerId) -> Vec<TaskId> {
        let ids: Vec<TaskId> = self
            .tasks
            .values()
            .filter(|t| t.server == server)
            .map(|t| t.id)
            .collect();
        for &id in &ids {
            self.release(id);
        }
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn any(_: &Task) -> Option<i64> {
        Some(0)
    }

    #[test]
    fn ranges_merge_remove_and_gaps() {
        let mut r = Ranges::new();
        r.insert(10, 20);
        r.insert(30, 40);
        r.insert(20, 25);
        assert_eq!(r.as_slice(), &[(10, 25), (30, 40)]);
        r.insert(5, 35);
        assert_eq!(r.as_slice(), &[(5, 40)]);
        r.remove(10, 12);
        assert_eq!(r.as_slice(), &[(5, 10), (12, 40)]);
        assert!(r.covers(12, 40));
        assert!(!r.covers(9, 13));
        assert!(r.covers(7, 7));
        assert_eq!(r.total(), 33);
        assert_eq!(r.gaps(50), vec![(0, 5), (10, 12), (40, 50)]);
        assert_eq!(r.run_end(6), 10);
        assert_eq!(r.run_end(10), 10);
        assert_eq!(
            Ranges::from_ranges([(3, 4), (0, 1), (1, 3), (9, 9)]).as_slice(),
            &[(0, 4)]
        );
    }

    #[test]
    fn assigns_free_bytes_in_order_and_in_chunks() {
        let mut p = Plan::new(10 * MIB, Ranges::new(), SplitRules::default());
        let a = p.assign(0, 4 * MIB, any).expect("work");
        let b = p.assign(1, 4 * MIB, any).expect("work");
        let c = p.assign(2, 4 * MIB, any).expect("work");
        assert_eq!(
            (a.start, a.end, b.start, b.end, c.start, c.end),
            (0, 4 * MIB, 4 * MIB, 8 * MIB, 8 * MIB, 10 * MIB)
        );
        assert_eq!(p.commit(c.id, 8 * MIB, 2 * MIB), Progress::Finished);
        assert_eq!(p.commit(a.id, 0, MIB), Progress::Continue { end: 4 * MIB });
        assert_eq!(p.done_bytes(), 3 * MIB);
    }

    #[test]
    fn a_resumed_plan_skips_done_bytes() {
        let mut p = Plan::new(
            100,
            Ranges::from_ranges([(0, 40), (60, 70)]),
            SplitRules {
                min_split: 1000,
                endgame: false,
            },
        );
        let a = p.assign(0, 1000, any).expect("work");
        assert_eq!((a.start, a.end), (40, 60));
        let b = p.assign(0, 1000, any).expect("work");
        assert_eq!((b.start, b.end), (70, 100));
        assert_eq!(p.assign(0, 1000, any), None);
    }

    #[test]
    fn a_dropped_server_leaves_its_remainder_free_from_the_exact_byte() {
        let mut p = Plan::new(
            8 * MIB,
            Ranges::new(),
            SplitRules {
                min_split: 100 * MIB,
                endgame: false,
            },
        );
        let a = p.assign(0, 4 * MIB, any).expect("work");
        let b = p.assign(1, 4 * MIB, any).expect("work");
        assert_eq!(p.commit(a.id, 0, 1_234_567), Progress::Continue { end: 4 * MIB });
        assert_eq!(p.drop_server(0), vec![a.id]);
        assert_eq!(p.commit(a.id, 1_234_567, 10), Progress::Gone);
        let c = p.assign(1, 16 * MIB, any).expect("work");
        assert_eq!((c.start, c.end), (1_234_567, 4 * MIB));
        assert_eq!(p.commit(c.id, 1_234_567, 4 * MIB - 1_234_567), Progress::Finished);
        assert_eq!(p.commit(b.id, 4 * MIB, 4 * MIB), Progress::Finished);
        assert!(p.is_complete());
    }

    #[test]
    fn idle_connections_split_the_largest_task() {
        let mut p = Plan::new(16 * MIB, Ranges::new(), SplitRules::default());
        let a = p.assign(0, 16 * MIB, any).expect("work");
        assert_eq!(p.commit(a.id, 0, 2 * MIB), Progress::Continue { end: 16 * MIB });
        let b = p.assign(1, 4 * MIB, any).expect("split");
        assert_eq!((b.start, b.end), (9 * MIB, 16 * MIB));
        assert_eq!(p.task(a.id).map(|t| t.end), Some(9 * MIB));
        // The shortened task reports its new end and stops there.
        assert_eq!(p.window(a.id, 2 * MIB, 8 * MIB), Some((0, 7 * MIB)));
        assert_eq!(p.commit(a.id, 2 * MIB, MIB), Progress::Continue { end: 9 * MIB });
    }

    #[test]
    fn the_endgame_duplicates_the_last_bytes_once_and_the_first_to_finish_wins() {
        let mut p = Plan::new(3 * MIB, Ranges::new(), SplitRules::default());
        let slow = p.assign(0, 3 * MIB, any).expect("work");
        assert_eq!(p.commit(slow.id, 0, 2 * MIB + 100), Progress::Continue { end: 3 * MIB });
        // Less than 2 × min_split remains: no split, a duplicate from another server.
        let racer = p.assign(1, MIB, any).expect("endgame");
        assert_eq!(
            (racer.start, racer.end, racer.races),
            (2 * MIB + 100, 3 * MIB, Some(slow.id))
        );
        // Not a second duplicate of the same task, and not from the holder's own server.
        assert_eq!(p.assign(2, MIB, any), None);
        assert_eq!(p.assign(0, MIB, any), None);
        assert_eq!(p.commit(racer.id, 2 * MIB + 100, MIB - 100), Progress::Finished);
        assert!(p.is_complete());
        assert_eq!(p.commit(slow.id, 2 * MIB + 100, 10), Progress::Gone);
        assert_eq!(p.tasks().count(), 0);
    }

    #[test]
    fn the_endgame_respects_the_callers_preference() {
        let mut p = Plan::new(
            2 * MIB,
            Ranges::new(),
            SplitRules {
                min_split: MIB,
                endgame: true,
            },
        );
        let a = p.assign(0, MIB, any).expect("work");
        let b = p.assign(1, MIB, any).expect("work");
        assert_eq!(p.commit(a.id, 0, 10), Progress::Continue { end: MIB });
        // The caller refuses to race server 1 (faster than us) and prefers racing server 0.
        let r = p.assign(2, MIB, |t| (t.server == 0).then_some(5)).expect("endgame");
        assert_eq!((r.start, r.races), (10, Some(a.id)));
        assert_eq!(p.assign(3, MIB, |_| None), None);
        let _ = b;
    }

    #[test]
    fn a_racer_that_overtakes_skips_bytes_the_holder_already_wrote() {
        let mut p = Plan::new(MIB, Ranges::new(), SplitRules::default());
        let a = p.assign(0, MIB, any).expect("work");
        let r = p.assign(1, MIB, any).expect("endgame");
        assert_eq!(r.start, 0);
        assert_eq!(p.commit(a.id, 0, 1000), Progress::Continue { end: MIB });
        // The racer's first 1000 bytes were written by the holder meanwhile: of 1500 bytes it
        // received from 0 it writes only the last 500, at 1000.
        assert_eq!(p.window(r.id, 0, 1500), Some((1000, 500)));
        assert_eq!(p.window(r.id, 0, 800), Some((800, 0)));
        assert_eq!(p.commit(r.id, 1000, 500), Progress::Continue { end: MIB });
        assert_eq!(p.task(r.id).map(|t| t.pos), Some(1500));
        assert_eq!(p.done_bytes(), 1500);
        // The holder's next bytes are skipped up to where the racer is.
        assert_eq!(p.window(a.id, 1000, 1000), Some((500, 500)));
    }

    #[test]
    fn undone_bytes_are_assigned_again() {
        let mut p = Plan::new(100, Ranges::from_ranges([(0, 100)]), SplitRules::default());
        assert!(p.is_complete());
        p.undo(20, 30);
        let t = p.assign(4, 1000, any).expect("work");
        assert_eq!((t.start, t.end), (20, 30));
    }
}
