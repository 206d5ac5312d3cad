//! The parallel compression engine behind backhand's single-threaded writer.
//!
//! Owns the table of *predicted* blocks — every data block of the files as the tar is read, and
//! the fragment blocks once the tree is sorted — their compression on a rayon pool, and the
//! [`CompressionAction`] through which backhand's writer collects them.
//!
//! Compression starts while the tar is still being read (a container export is a slow stream,
//! so this overlaps the two) and the writer starts as soon as the tree is complete, while workers
//! are still busy. When the writer asks for a block: if a worker has compressed it, it is served;
//! if a worker is compressing it, the writer waits; if no worker has started it yet, the writer
//! claims it and compresses it itself, so it never waits behind the queue. Each block is
//! compressed exactly once, by whoever claims it first, with backhand's own compressor: the bytes
//! do not depend on who or how many threads did it. Requests for anything not predicted
//! (metadata blocks) are compressed inline.
//!
//! Blocks are looked up by the BLAKE3 of their bytes, and a hit is confirmed by comparing the
//! bytes with the block the entry was made from, so a hash collision could cost speed, never
//! correctness. Identical blocks (duplicate files, shared prefixes) are compressed once.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};

use backhand::compression::{CompressionAction, Compressor, DefaultCompressor};
use backhand::kind::Kind as FsKind;
use backhand::{BackhandError, FilesystemCompressor, SuperBlock};

use super::RootfsError;
use super::normalize;

/// Bytes of one predicted block: a range of a file's contents, or an owned fragment block.
#[derive(Debug)]
struct Source {
    data: Arc<Vec<u8>>,
    start: usize,
    len: usize,
}

impl Source {
    fn bytes(&self) -> &[u8] {
        &self.data[self.start..self.start + self.len]
    }
}

#[derive(Debug)]
enum State {
    /// Queued, nobody compressing it yet.
    Pending,
    /// A worker or the writer is compressing it.
    Running,
    Done(Arc<Vec<u8>>),
    Failed(String),
}

/// One predicted block and its compressed form.
#[derive(Debug)]
struct Slot {
    source: Source,
    state: Mutex<State>,
    ready: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding one of these locks leaves consistent data (plain assignments).
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Slot {
    /// Claims the block if nobody has; returns whether we did.
    fn claim(&self) -> bool {
        let mut state = lock(&self.state);
        if matches!(*state, State::Pending) {
            *state = State::Running;
            true
        } else {
            false
        }
    }

    /// Compresses a claimed block and publishes the result. A panic publishes a failure (through
    /// the guard), so a waiting writer never hangs.
    fn run(&self, fc: FilesystemCompressor, block_size: u32) {
        struct Publish<'s>(&'s Slot, Option<State>);
        impl Drop for Publish<'_> {
            fn drop(&mut self) {
                let state = self.1.take().unwrap_or_else(|| State::Failed("compression panicked".into()));
                *lock(&self.0.state) = state;
                self.0.ready.notify_all();
            }
        }
        let mut publish = Publish(self, None);
        publish.1 = Some(match DefaultCompressor.compress(self.source.bytes(), fc, block_size) {
            Ok(c) => State::Done(Arc::new(c)),
            Err(e) => State::Failed(e.to_string()),
        });
    }

    /// Waits for the result.
    fn wait(&self) -> Result<Arc<Vec<u8>>, String> {
        let mut state = lock(&self.state);
        loop {
            match &*state {
                State::Done(c) => return Ok(Arc::clone(c)),
                State::Failed(e) => return Err(e.clone()),
                State::Pending | State::Running => {
                    state = self.ready.wait(state).unwrap_or_else(PoisonError::into_inner);
                }
            }
        }
    }
}

/// Usage counters, for the report.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    /// Distinct blocks predicted.
    pub predicted: AtomicU64,
    /// Predicted blocks compressed by the pool's workers.
    pub by_workers: AtomicU64,
    /// Predicted blocks the writer compressed itself because it needed them first.
    pub by_writer: AtomicU64,
    /// Writer requests answered from predicted blocks.
    pub served: AtomicU64,
    /// Writer requests for blocks not predicted (metadata), compressed inline.
    pub inline: AtomicU64,
}

/// Predicted blocks, the pool compressing them, and the counters.
#[derive(Debug)]
pub(crate) struct Engine {
    pool: rayon::ThreadPool,
    fc: FilesystemCompressor,
    block_size: u32,
    slots: Mutex<HashMap<[u8; 32], Arc<Slot>>>,
    /// Set when the build is abandoned: queued blocks are then skipped.
    cancelled: Arc<AtomicBool>,
    pub counters: Arc<Counters>,
}

impl Engine {
    pub fn new(fc: FilesystemCompressor, block_size: u32, threads: usize) -> Result<Self, RootfsError> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("squashfs-{i}"))
            // A panicking block is reported through its slot; do not abort the process.
            .panic_handler(|_| {})
            .build()
            .map_err(|source| RootfsError::ThreadPool { threads, source })?;
        Ok(Self {
            pool,
            fc,
            block_size,
            slots: Mutex::new(HashMap::new()),
            cancelled: Arc::new(AtomicBool::new(false)),
            counters: Arc::new(Counters::default()),
        })
    }

    /// Called for each regular file as the tar is read: queues its full data blocks, unless the
    /// normalization will drop or replace the file. Files shorter than a block become fragments,
    /// queued later by [`Engine::submit_fragment`] once the write order is known.
    pub fn submit_file(&self, rel: &Path, data: &Arc<Vec<u8>>) {
        let bs = self.block_size as usize;
        if data.len() < bs || normalize::rule_for(rel, false).is_some() {
            return;
        }
        for start in (0..data.len()).step_by(bs) {
            let len = bs.min(data.len() - start);
            // An all-zero block is stored as a hole: backhand never compresses it.
            if data[start..start + len].iter().any(|b| *b != 0) {
                self.submit(Source { data: Arc::clone(data), start, len });
            }
        }
    }

    /// Queues one fragment block.
    pub fn submit_fragment(&self, block: Vec<u8>) {
        let len = block.len();
        self.submit(Source { data: Arc::new(block), start: 0, len });
    }

    fn submit(&self, source: Source) {
        let hash = *blake3::hash(source.bytes()).as_bytes();
        let slot = match lock(&self.slots).entry(hash) {
            // Same bytes already queued (duplicate file, shared block), or a collision: either
            // way nothing new to queue; a collision is compressed inline at write time.
            Entry::Occupied(_) => return,
            Entry::Vacant(e) => Arc::clone(e.insert(Arc::new(Slot {
                source,
                state: Mutex::new(State::Pending),
                ready: Condvar::new(),
            }))),
        };
        self.counters.predicted.fetch_add(1, Ordering::Relaxed);
        let (fc, bs) = (self.fc, self.block_size);
        let (cancelled, counters) = (Arc::clone(&self.cancelled), Arc::clone(&self.counters));
        self.pool.spawn(move || {
            if !cancelled.load(Ordering::Relaxed) && slot.claim() {
                slot.run(fc, bs);
                counters.by_workers.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    /// The compressed form of `bytes`, if it was predicted; `None` otherwise.
    fn lookup(&self, bytes: &[u8]) -> Option<Result<Arc<Vec<u8>>, String>> {
        let slot = lock(&self.slots).get(blake3::hash(bytes).as_bytes()).cloned()?;
        if slot.source.bytes() != bytes {
            return None; // a BLAKE3 collision: never serve another block's bytes
        }
        if slot.claim() {
            slot.run(self.fc, self.block_size);
            self.counters.by_writer.fetch_add(1, Ordering::Relaxed);
        }
        self.counters.served.fetch_add(1, Ordering::Relaxed);
        Some(slot.wait())
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // On success every slot is done; on error the queue is abandoned.
        self.cancelled.store(true, Ordering::Relaxed);
    }
}

thread_local! {
    /// The engine of the write running on this thread. backhand's writer calls `compress` only
    /// on the thread that called `FilesystemWriter::write`, so concurrent builds on other
    /// threads each see their own.
    static ACTIVE: std::cell::RefCell<Option<Arc<Engine>>> = const { std::cell::RefCell::new(None) };
}

/// Makes `engine` serve this thread's backhand writes until dropped (also on error or panic).
#[derive(Debug)]
pub(crate) struct Active(());

impl Active {
    pub fn install(engine: Arc<Engine>) -> Self {
        ACTIVE.with(|a| *a.borrow_mut() = Some(engine));
        Active(())
    }
}

impl Drop for Active {
    fn drop(&mut self) {
        ACTIVE.with(|a| a.borrow_mut().take());
    }
}

/// backhand's compressor, except that predicted blocks come from the [`ACTIVE`] engine.
#[derive(Debug)]
pub(crate) struct Precompressed;

/// backhand's custom-compressor hook wants a `'static` reference.
pub(crate) static PRECOMPRESSED: Precompressed = Precompressed;

impl CompressionAction for Precompressed {
    type Error = BackhandError;
    type Compressor = Compressor;
    type FilesystemCompressor = FilesystemCompressor;
    type SuperBlock = SuperBlock;

    fn decompress(&self, bytes: &[u8], out: &mut Vec<u8>, compressor: Compressor) -> Result<(), BackhandError> {
        DefaultCompressor.decompress(bytes, out, compressor)
    }

    fn compress(&self, bytes: &[u8], fc: FilesystemCompressor, block_size: u32) -> Result<Vec<u8>, BackhandError> {
        // The engine is installed only around our own write, whose `fc` it was built with.
        let engine = ACTIVE.with(|a| a.borrow().clone());
        match engine.as_ref().and_then(|e| e.lookup(bytes)) {
            Some(Ok(block)) => Ok(block.as_ref().clone()),
            Some(Err(e)) => Err(BackhandError::UnsupportedCompression(format!("compressing a block: {e}"))),
            None => {
                if let Some(e) = &engine {
                    e.counters.inline.fetch_add(1, Ordering::Relaxed);
                }
                DefaultCompressor.compress(bytes, fc, block_size)
            }
        }
    }

    fn compression_options(
        &self,
        superblock: &mut SuperBlock,
        kind: &FsKind,
        fs_compressor: FilesystemCompressor,
    ) -> Result<Option<Vec<u8>>, BackhandError> {
        DefaultCompressor.compression_options(superblock, kind, fs_compressor)
    }
}

#[cfg(test)]
mod tests {
    use backhand::compression::{CompressionOptions, Zstd};

    use super::*;

    fn zstd(level: u32) -> FilesystemCompressor {
        let options = CompressionOptions::Zstd(Zstd { compression_level: level });
        FilesystemCompressor::new(Compressor::Zstd, Some(options)).unwrap()
    }

    fn block(seed: u8, len: usize) -> Vec<u8> {
        (0..len).map(|i| (i as u8).wrapping_mul(seed) ^ (i / 7) as u8).collect()
    }

    #[test]
    fn predicted_blocks_are_served_with_backhands_own_bytes() {
        let fc = zstd(3);
        let engine = Engine::new(fc, 4096, 2).unwrap();
        let file = Arc::new([block(3, 4096), vec![0; 4096], block(5, 100)].concat());
        engine.submit_file(Path::new("usr/lib/a"), &file);
        engine.submit_file(Path::new("usr/lib/b"), &Arc::clone(&file)); // same bytes: no new slot
        engine.submit_file(Path::new("var/log/x"), &Arc::new(block(9, 8192))); // removed by a rule
        engine.submit_fragment(block(7, 300));
        assert_eq!(engine.counters.predicted.load(Ordering::Relaxed), 3, "2 data blocks (no hole) + 1 fragment");
        for want in [&file[..4096], &file[8192..], &block(7, 300)[..]] {
            let got = engine.lookup(want).unwrap().unwrap();
            assert_eq!(*got, DefaultCompressor.compress(want, fc, 4096).unwrap());
        }
        assert!(engine.lookup(&block(9, 4096)).is_none(), "not predicted");
        assert!(engine.lookup(&file[4096..8192]).is_none(), "holes are never compressed");
        assert_eq!(engine.counters.served.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn the_writer_compresses_what_no_worker_has_started() {
        let engine = Engine::new(zstd(3), 4096, 1).unwrap();
        engine.cancelled.store(true, Ordering::Relaxed); // workers skip everything
        let data = block(11, 4096);
        engine.submit_fragment(data.clone());
        let got = engine.lookup(&data).unwrap().unwrap();
        assert_eq!(*got, DefaultCompressor.compress(&data, zstd(3), 4096).unwrap());
        assert_eq!(engine.counters.by_writer.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_failed_block_is_reported_not_waited_for_forever() {
        // backhand built without lzo cannot compress with it: every attempt fails.
        let lzo = FilesystemCompressor::new(Compressor::Lzo, None).unwrap();
        let engine = Engine::new(lzo, 4096, 2).unwrap();
        let data = block(13, 4096);
        engine.submit_fragment(data.clone());
        assert!(engine.lookup(&data).unwrap().is_err());
    }
}
