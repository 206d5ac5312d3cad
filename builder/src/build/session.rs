//! One build's time with the engine: connect, reap dead runs' leftovers, record what this run
//! creates in a journal, build from a Dockerfile context, create export containers, and remove
//! all of it at the end — whatever happened.
//!
//! Both the rootfs and the kernel builds run their phases inside a [`Session`]: [`Session::open`],
//! the phases (possibly panicking), then [`Session::close`], which always runs.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use super::stale::{self, Reaped, RunId};
use super::{BuildError, BuildOptions, save_log};
use crate::engine::{BuildEvent, BuildLog, BuildRequest, Engine, Progress};

/// Distinguishes builds of one process.
static NEXT_BUILD: AtomicU64 = AtomicU64::new(0);

/// Engine objects this run created, removed at the end whatever happened.
#[derive(Debug, Default)]
struct Resources {
    containers: Vec<String>,
    images: Vec<String>,
}

/// A connected engine plus this run's bookkeeping.
#[derive(Debug)]
pub(crate) struct Session<'o> {
    pub(crate) engine: Engine,
    pub(crate) me: RunId,
    pub(crate) progress: Progress,
    pub(crate) opts: &'o BuildOptions,
    /// `endpoint (API x.y)`.
    pub(crate) engine_text: String,
    /// Leftovers of killed runs removed when the session opened.
    pub(crate) stale_removed: Reaped,
    /// Seconds spent connecting and reaping.
    pub(crate) prepare: f64,
    journal: Option<stale::Journal>,
    resources: Resources,
}

/// What [`Session::close`] reports.
#[derive(Debug)]
pub(crate) struct Closed {
    pub(crate) warnings: Vec<String>,
    pub(crate) seconds: f64,
}

impl<'o> Session<'o> {
    /// Connects and removes what killed runs left behind. `what` prefixes progress messages.
    pub(crate) async fn open(opts: &'o BuildOptions, state_dir: &Path, what: &str) -> Result<Self, BuildError> {
        let mut progress = Progress::new(opts.progress);
        let t = Instant::now();
        let engine = match &opts.endpoint {
            Some(e) => Engine::connect(e.clone()).await?,
            None => Engine::connect_default().await?,
        };
        let engine_text = format!("{} (API {})", engine.endpoint(), engine.api_version());
        progress.message(&format!("{what}: engine {engine_text}"));
        let me = RunId::current();
        let stale_removed = match stale::reap(&engine, state_dir, &me).await {
            Ok(r) => r,
            Err(e) => Reaped { warnings: vec![format!("removing leftovers of killed runs: {e}")], ..Reaped::default() },
        };
        if !stale_removed.containers.is_empty() || !stale_removed.images.is_empty() {
            progress.message(&format!(
                "removed leftovers of killed runs: {} containers, {} images",
                stale_removed.containers.len(),
                stale_removed.images.len()
            ));
        }
        let journal = stale::Journal::create(state_dir, &me).ok();
        Ok(Session {
            engine,
            me,
            progress,
            opts,
            engine_text,
            stale_removed,
            prepare: t.elapsed().as_secs_f64(),
            journal,
            resources: Resources::default(),
        })
    }

    /// A fresh tag `<repo>:<run token>-<n>`, unique across concurrent builds.
    pub(crate) fn new_tag(&self, repo: &str) -> String {
        let n = NEXT_BUILD.fetch_add(1, Ordering::Relaxed);
        format!("{repo}:{}-{n}", self.me.token())
    }

    /// Builds `context` into `tag` (removed at close unless `keep`). On a failed step the full log
    /// is saved to `log_path` and named in the error.
    pub(crate) async fn build(
        &mut self,
        context: Vec<u8>,
        tag: &str,
        platform: &str,
        sde: u64,
        keep: bool,
        log_path: &Path,
    ) -> Result<(), BuildError> {
        if !keep {
            self.resources.images.push(tag.to_owned());
        }
        if let Some(j) = self.journal.as_mut() {
            j.record("image", tag);
        }
        let request = BuildRequest {
            tag: tag.to_owned(),
            platform: Some(platform.to_owned()),
            build_args: [("SOURCE_DATE_EPOCH".to_owned(), sde.to_string())].into(),
            labels: self.me.labels(),
            network_mode: self.opts.network_mode.clone(),
            no_cache: true,
        };
        let mut log = BuildLog::new();
        let mut intermediates = Vec::new();
        let journal = &mut self.journal;
        let mut on_event = |event: &BuildEvent| {
            if let BuildEvent::Image(id) = event {
                intermediates.push(id.clone());
            }
            if let Some(j) = journal.as_mut() {
                match event {
                    BuildEvent::Container(id) => j.record("container", id),
                    BuildEvent::Image(id) => j.record("image", id),
                }
            }
        };
        let built = self.engine.build_image(context, &request, &mut log, &mut self.progress, &mut on_event).await;
        if !keep {
            // Removing the tag prunes the whole chain; after a failed step there is no tag, and the
            // steps that did succeed left these images behind.
            self.resources.images.extend(intermediates.into_iter().rev());
        }
        if let Err(source) = built {
            let saved = save_log(log_path, log.lines()).then(|| log_path.to_path_buf());
            return Err(BuildError::Build { source, log: saved });
        }
        Ok(())
    }

    /// Creates (never starts) a container of `image` named `name`, removed at close.
    pub(crate) async fn create_container(&mut self, image: &str, name: &str) -> Result<String, BuildError> {
        let id = self.engine.create_container(image, name, &self.me.labels()).await?;
        self.resources.containers.push(id.clone());
        if let Some(j) = self.journal.as_mut() {
            j.record("container", &id);
        }
        Ok(id)
    }

    /// Removes every container and image this session created; finishes the journal when that
    /// worked (a journal left behind lets the next run finish the job).
    pub(crate) async fn close(mut self) -> Closed {
        let t = Instant::now();
        let mut warnings = Vec::new();
        for id in self.resources.containers.drain(..) {
            if let Err(e) = self.engine.remove_container(&id).await {
                warnings.push(e.to_string());
            }
        }
        for image in self.resources.images.drain(..) {
            if let Err(e) = self.engine.remove_image(&image, true).await {
                warnings.push(e.to_string());
            }
        }
        if let Some(j) = self.journal.take().filter(|_| warnings.is_empty()) {
            j.finish();
        }
        for w in &warnings {
            self.progress.message(&format!("warning: clean-up: {w}"));
        }
        Closed { warnings, seconds: t.elapsed().as_secs_f64() }
    }
}

/// Runs `f` on its own current-thread runtime in a scoped thread, so a blocking caller may be
/// inside another runtime.
pub(crate) fn block_on<T: Send>(
    out: &Path,
    f: impl std::future::Future<Output = Result<T, BuildError>> + Send,
) -> Result<T, BuildError> {
    let out: PathBuf = out.to_path_buf();
    std::thread::scope(|s| {
        let worker = s.spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|source| BuildError::Io { op: "starting the async runtime for", path: out, source })?;
            runtime.block_on(f)
        });
        worker.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}
