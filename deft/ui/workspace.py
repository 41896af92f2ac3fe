"""Server-side state of the app: dataset, detection runs, review store, background jobs.

One :class:`Workspace` per browser session (a load by one client never changes what
another is reviewing), kept by a :class:`Workspaces` registry that the UI builder
gets (no module-level state). Two sessions on one dataset share its review.sqlite,
which is safe: every action names the sample and version it was shown.

The layout under ``runs/`` and the operations on it (import, run discovery, review store, detection, audit,
training, export, ground truth) belong to :class:`deft.project.Project`, which the CLI uses too; a Workspace
keeps per-session state (dataset, run, store, queues, job, notes) and runs Project's operations in jobs.
"""

from __future__ import annotations

import html
import json
import threading
from collections import OrderedDict
from contextlib import nullcontext
from dataclasses import dataclass, field, replace
from pathlib import Path

import pandas as pd

from deft.core.config import Phase1Config, Phase2Config, phase1_preset
from deft.core.device import pick_device
from deft.core.errors import ReviewError, RunError
from deft.core.ranking import RankConfig, remaining_estimate
from deft.core.schema import DEFAULT_MODEL, JobName, Stage
from deft.detect_cost import measure_full_deft_step, preselect_preview, projection_line, vision_width
from deft.embeddings import embeddings_path
from deft.evidence import EvidenceIndex, Neighbour, apply_decisions, clean_verdicts
from deft.jobs import Job
from deft.learning import ORDER, ProcessLearner, QueueLearner, load_learner, signals_path, unreviewed_suspects
from deft.project import Project, check_method, thumbs_dir
from deft.review import ReviewFilter, ReviewQueue, dataset_key, suggestions  # noqa: F401  (dataset_key re-exported)
from deft.storage.data import Dataset
from deft.storage.export import curated_labels
from deft.storage.interop import FIFTYONE_PREFIX
from deft.storage.roots import DataRoots
from deft.storage.run import Run
from deft.storage.store import ReviewStore
from deft.storage.train_log import epoch_history, training_curves
from deft.storage.train_runs import TrainingRun, epoch_log
from deft.ui.views import merge_epochs, queue_note


@dataclass
class AppSettings:
    data: str = "assets/demo"
    root: str | None = None
    model: str = DEFAULT_MODEL
    runs: Path = Path("runs")
    device: str = "auto"
    epochs: int = 10
    batch_size: int = 64
    train_epochs: int = 10
    data_roots: tuple[str, ...] = ()  # folders datasets may be read from (empty: no restriction, library use)
    rerank_every: int = RankConfig.every  # the review queue's model is refit after this many new decisions

    def rank_config(self) -> RankConfig:
        """How the review queue learns; a small ``rerank_every`` (tests, demos) also lowers the decisions the
        reviewer's model needs before it replaces the unsupervised ranking."""
        n = max(1, int(self.rerank_every))
        return RankConfig(every=n, min_decisions=min(RankConfig.min_decisions, n))


class Once:
    """Values made once per key and shared by every session, also when sessions ask at the same time: the second
    waits for the first instead of repeating its work (a browser's first page and its Review tab both imported a
    1M-image folder and loaded its scores into the store, side by side on two cores)."""

    def __init__(self) -> None:
        self._items: dict = {}
        self._locks: dict = {}
        self._lock = threading.Lock()

    def lock(self, key) -> threading.Lock:
        """The lock that serialises the work on ``key``."""
        with self._lock:
            return self._locks.setdefault(key, threading.Lock())

    def get(self, key, make):
        """The value of ``key``, made by ``make()`` once (an exception is raised to each caller, and not kept)."""
        with self._lock:
            if key in self._items:
                return self._items[key]
        with self.lock(key):
            with self._lock:
                if key in self._items:
                    return self._items[key]
            value = make()
            with self._lock:
                self._items[key] = value
            return value


class _Loading:
    """A learner being loaded in the background (``done`` once ``learner`` is set, None if the run has none)."""

    def __init__(self) -> None:
        self.done = threading.Event()
        self.learner: QueueLearner | ProcessLearner | None = None


class Learners:
    """One :class:`~deft.learning.QueueLearner` per review store and audited run, shared by every session on
    that dataset (two reviewers feed one model). Loaded in a background thread when a session attaches the run
    (the signals and the unsupervised fit took ~20 s at 1M samples: the first card does not wait for them, and
    never a key press)."""

    def __init__(self, config: RankConfig) -> None:
        self.config = config
        self._items: dict[tuple, _Loading] = {}  # one worker process each (a replaced one is closed)
        self._notes: dict[tuple, list[str]] = {}
        self._lock = threading.Lock()

    def get(self, store: ReviewStore, run: Run, wait: bool = True) -> QueueLearner | None:
        """The run's learner (None before an audit with signals). Starts loading it if needed; ``wait=False``
        returns None until it is loaded (a refit due meanwhile starts when it is)."""
        key = self._key(store, run)
        if key is None:
            return None
        with self._lock:
            slot = self._items.get(key)
            if slot is None:  # a new audit (or run) of this store replaces its learner
                for k, old in self._items.items():
                    if k[0] == key[0] and old.learner is not None:
                        old.learner.close()
                self._items = {k: v for k, v in self._items.items() if k[0] != key[0]}
                self._notes = {k: v for k, v in self._notes.items() if k[0] != key[0]}
                slot = self._items[key] = _Loading()
                threading.Thread(target=self._load, args=(key, slot, store, run), daemon=True,
                                 name="deft-learner-load").start()
        if wait:
            slot.done.wait()
        return slot.learner if slot.done.is_set() else None

    def _load(self, key: tuple, slot: _Loading, store: ReviewStore, run: Run) -> None:
        notes: list[str] = []
        try:
            try:
                learner = ProcessLearner(store, run.path, self.config)  # refits off the server's GIL
            except (RuntimeError, OSError):  # no worker process here (a script without a __main__ guard)
                slot.learner = load_learner(store, run.path, self.config, notes)
            else:
                if learner.wait_loaded():
                    slot.learner = learner
                notes += learner.notes
        except Exception as exc:  # noqa: BLE001 - the review works without the learning queue; say why
            notes.append(f"{type(exc).__name__}: {exc}")
        finally:
            with self._lock:
                self._notes[key] = notes
            slot.done.set()
        if slot.learner is not None:
            slot.learner.maybe_refit_async()  # decisions taken while it loaded

    def notes(self, store: ReviewStore, run: Run) -> list[str]:
        """Why the run's learner is missing although its audit saved signals (damaged, other samples), if so."""
        key = self._key(store, run)
        with self._lock:
            return list(self._notes.get(key, [])) if key is not None else []

    @staticmethod
    def _key(store: ReviewStore, run: Run) -> tuple | None:
        p = signals_path(run.path)
        try:
            return (str(Path(store.path).resolve()), str(p.resolve()), p.stat().st_mtime_ns)
        except OSError:  # no signals yet
            return None


@dataclass
class Workspace:
    settings: AppSettings
    dataset: Dataset | None = None
    run: Run | None = None
    store: ReviewStore | None = None
    job: Job | None = None
    queues: dict[str, ReviewQueue] = field(default_factory=dict)
    datasets: Once | None = None  # shared imports and store loads (set by Workspaces): sessions don't repeat them
    learners: Learners | None = None  # shared by Workspaces: one learning queue per dataset store
    detect_dir: Path | None = None  # the run folder of the latest detection job (its log feeds the curves)
    train_dir: Path | None = None  # the folder of the latest training job (its log: the whole curve of a resumed run)
    notes: list[str] = field(default_factory=list)  # run files found damaged at the last load (one sentence each)
    _evidence: tuple[tuple, EvidenceIndex | None] | None = None  # (embeddings stamp, index) of the current run
    _trusted: tuple | None = None  # (index, store path, store.stamp()) when the index was last given trusted labels
    _verdicts: tuple | None = None  # ((index, store path, samples generation), DEFT's labels, trusted)
    _ids: tuple[Dataset, frozenset[str]] | None = None  # (dataset, its sample ids): what a client may name
    _note: tuple | None = None  # ((store, stamp, rank report), the counter's queue note)
    _lock: threading.RLock = field(default_factory=threading.RLock)

    # -- dataset --------------------------------------------------------------
    @property
    def project(self) -> Project:
        """The loaded dataset's :class:`~deft.project.Project` (its layout and operations)."""
        if self.dataset is None:
            raise RuntimeError("load a dataset first")
        return Project(self.settings.runs, self.dataset.source)

    @property
    def home(self) -> Path:
        return self.project.home

    def load(self, source: str, root: str | None = None) -> Dataset:
        """Import a dataset; re-open its latest finished detection and review store if any."""
        named = source.startswith(FIFTYONE_PREFIX) and source == self.settings.data  # a FiftyOne database name
        if self.settings.data_roots and not named:  # refuse paths outside the data roots before touching them
            roots = DataRoots.of(self.settings.data_roots)
            source, root = str(roots.check(source)), root and str(roots.check(root))
        ds = self._import(source, root or None)
        with self._lock:
            self.dataset, self.run, self.store, self.notes = ds, None, None, []
            self.queues.clear()
            self.home.mkdir(parents=True, exist_ok=True)
            latest = self.project.latest_run_dir()
            if latest is not None:
                try:
                    self.attach(Run.open(latest))
                except RunError as exc:  # a damaged run (or review store): the dataset still loads, and says why
                    self.notes.append(f"The detection results in {latest} were not loaded: {exc}")
        return ds

    def sample_path(self, sample_id: str) -> Path:
        """The file of ``sample_id``, a sample of the loaded dataset; any other id (a path, ``../x``, an id of
        another dataset) is refused with the same sentence whether or not such a file exists."""
        ds = self.dataset
        if ds is None:
            raise RuntimeError("load a dataset first")
        ids = self._ids
        if ids is None or ids[0] is not ds:
            ids = self._ids = (ds, frozenset(ds.samples["id"].astype(str)))
        if sample_id not in ids[1]:
            raise ReviewError("That sample is not in this dataset.")
        return Path(ds.root) / sample_id

    def _import(self, source: str, root: str | None) -> Dataset:
        if self.datasets is None:
            return self._verified_import(source, root)
        p = Path(source)
        key = (str(p.resolve()), root, p.stat().st_mtime_ns if p.exists() else 0)
        return self.datasets.get(key, lambda: self._verified_import(source, root))

    def _verified_import(self, source: str, root: str | None) -> Dataset:
        """Import ``source`` (:meth:`deft.project.Project.import_dataset`: only the images no earlier import
        decoded are decoded)."""
        return Project(self.settings.runs, source).import_dataset(root)

    def attach(self, run: Run) -> None:
        """Make ``run`` current and load its scores into the dataset's review store (once: a session attaching
        the same store meanwhile waits, then finds it loaded)."""
        project = self.project
        path = project.store_path
        with self.datasets.lock(("store", str(path.resolve()))) if self.datasets is not None else nullcontext():
            store = project.open_store(run, path)
        if self.learners is None:
            self.learners = Learners(self.settings.rank_config())
        self.learners.get(store, run, wait=False)  # starts loading it in the background
        with self._lock:
            self.run, self.store = run, store
            self.notes = list(run.notes)
            self.queues.clear()
        self.learn()

    @property
    def learner(self) -> QueueLearner | None:
        """The current run's learning queue (None before an audit with signals); waits until it is loaded."""
        run, store = self.run, self.store
        return None if run is None or store is None or self.learners is None else self.learners.get(store, run)

    def all_notes(self) -> list[str]:
        """:attr:`notes`, and why the review queue does not learn when its signals were found damaged (once the
        background load found out)."""
        run, store, learners = self.run, self.store, self.learners
        extra = learners.notes(store, run) if run is not None and store is not None and learners is not None else []
        return [*self.notes, *(f"The review queue does not learn from decisions: {n}" for n in extra)]

    def learn(self) -> None:
        """After a decision: refit the queue's model in a background thread when one is due. The caller never
        waits for the refit (two indexed lookups decide whether one is due), nor for the learner's load."""
        run, store, learners = self.run, self.store, self.learners
        ready = run is not None and store is not None and learners is not None
        learner = learners.get(store, run, wait=False) if ready else None
        if learner is not None:
            learner.maybe_refit_async()

    @property
    def ranked(self) -> bool:
        """Whether the review store has the combined ranking (``p_wrong``, suggestions ``s1..s3``: an audit)."""
        return self.store is not None and self.store.expected_wrong() is not None

    def default_filter(self) -> ReviewFilter:
        """A new reviewer's filter: every sample, most likely wrong first, once the run has the combined
        order (an audit); DEFT's suspects by margin before."""
        return ReviewFilter(suspects=None, order=ORDER) if self.ranked else ReviewFilter()

    def queue_note(self, count: dict | None = None) -> str:
        """The Review counter's second line: the last re-rank and the stopping rule (cached per store stamp).
        ``count``: the store's :meth:`~deft.storage.store.ReviewStore.count` when the caller has it (DEFT's suspects
        left unreviewed, the stopping rule's second estimate)."""
        store = self.store
        if store is None:
            return ""
        run, learners = self.run, self.learners
        # why the queue does not learn (damaged signals): found by the learner's background load, after the
        # dataset's summary was shown, so said here too (the counter is polled)
        broken = learners.notes(store, run) if run is not None and learners is not None else []
        key = (str(store.path), store.stamp(), store.get_meta("rank_report", ""), tuple(broken))
        cached = self._note
        if cached is not None and cached[0] == key:
            return cached[1]
        wrong = store.expected_wrong()
        est = None if wrong is None else remaining_estimate(wrong[0], unreviewed_suspects(store, count), wrong[1])
        note = queue_note(json.loads(key[2]) if key[2] else None, est)
        if broken:
            why = html.escape(f"the queue does not learn from decisions: {broken[0]}")
            note = f"{note} · {why}" if note else why
        self._note = (key, note)
        return note

    # -- jobs -----------------------------------------------------------------
    def _start(self, name: str, fn) -> Job:
        with self._lock:
            if self.job is not None and self.job.running:
                raise RuntimeError(f"a {self.job.name} job is running; wait for it or cancel it first")
            self.job = Job(name, fn).start()
            return self.job

    def phase1_config(self, model: str, real_world: bool, epochs: int, preview: bool = False) -> Phase1Config:
        return phase1_preset(model=model, real_world=real_world, feature_cache=preview,
                             optim={"epochs": int(epochs), "batch_size": self.settings.batch_size})

    def preview_advice(self, model: str) -> tuple[bool, str]:
        """Whether to preselect the quick preview for ``model`` on this machine, and why (one line)."""
        width = vision_width(model)
        gpu = pick_device(self.settings.device).type != "cpu"
        if preselect_preview(gpu, width):
            return True, (f"No GPU here: the quick preview is preselected for this checkpoint (width {width}, "
                          f"ViT-B size or larger). Press *Estimate full DEFT time* before unticking it.")
        return False, ""

    def estimate_full_deft(self, model: str, epochs: int) -> str:
        """Full DEFT's projected training time on this machine: one step timed at the batch size the run uses
        (the detection's config, capped by the training rows), times the steps the run takes."""
        if self.dataset is None:
            raise RuntimeError("load a dataset first (Dataset tab)")
        cfg = self.phase1_config(model, False, int(epochs))
        step_s, batch = measure_full_deft_step(self.dataset, cfg, device=self.settings.device)
        n = len(self.dataset.train_rows)
        return projection_line(step_s, n, batch, int(epochs), pick_device(self.settings.device).type)

    def start_detect(self, model: str, real_world: bool, epochs: int, preview: bool = False,
                     method: str = "deft") -> Job:
        """Detection in the background (:meth:`deft.project.Project.detect`): ``method`` deft, a baseline
        (zeroshot / cleanlab, no prompt training, then the audit pass), or all (DEFT, then the audit pass with
        every baseline)."""
        if self.dataset is None:
            raise RuntimeError("load a dataset first (Dataset tab)")
        check_method(method)
        ds, project, cfg = self.dataset, self.project, self.phase1_config(model, real_world, epochs, preview)
        out = self.detect_dir = project.detect_dir(cfg, method)

        def fn(progress, cancel):
            res = project.detect(ds, cfg, method, out=out, device=self.settings.device, progress=progress,
                                 cancel=cancel)
            run = Run.open(res.run.path)  # re-read: the audit rewrote scores
            with self._lock:
                if self.dataset is ds:  # the user may have loaded another dataset meanwhile
                    self.attach(run)
            return res

        return self._start(JobName.DETECTION, fn)

    def start_audit(self) -> Job:
        """``deft audit`` on the current run in the background (baselines, data issues, class report, map)."""
        if self.run is None:
            raise RuntimeError("run detection first (Detect tab)")
        ds, path = self.dataset, self.run.path

        def fn(progress, cancel):
            res = Project.audit(path, device=self.settings.device, progress=progress, cancel=cancel)
            with self._lock:
                if self.dataset is ds:
                    self.attach(Run.open(path))  # the scores table now carries the audit columns
            return res

        return self._start(JobName.AUDIT, fn)

    def start_train(self, mode: str, epochs: int) -> Job:
        if self.run is None or self.store is None:
            raise RuntimeError("run detection first (Detect tab)")
        run, store = self.run, self.store
        self.train_dir = None  # until the job picks its folder: not the previous run's curve
        optim = replace(Phase2Config().optim, epochs=int(epochs), batch_size=self.settings.batch_size)
        cfg = Phase2Config(model=run.config.model, optim=optim)

        def fn(progress, cancel):
            curated = curated_labels(store.export(), mode)
            out = self.train_dir = Project.train_dir(run, curated, cfg)
            return Project.train(run, curated, cfg, out=out, device=self.settings.device, progress=progress,
                                 cancel=cancel, tags={"mode": mode})

        return self._start(JobName.TRAINING, fn)

    def training_runs(self) -> pd.DataFrame:
        """The current detection run's past training runs (mode, epochs, last/best accuracy, held out on)."""
        return Project.training_runs(self.run)

    def latest_training_run(self) -> TrainingRun | None:
        """The current detection run's most recent training run (what the Train tab shows after a reload)."""
        return Project.latest_training_run(self.run)

    def train_epochs(self, job: Job | None = None) -> list[dict]:
        """The training job's finished epochs, after those its folder logged before (a resumed run's whole curve)."""
        logged = epoch_log(self.train_dir) if self.train_dir is not None else []
        return merge_epochs(logged, job.snapshot()[2] if job is not None else [])

    def detect_curves(self, job: Job | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
        """Loss and clean-fraction curves (x in epochs) of the latest detection: this job's steps on
        top of every epoch in the run's log, so a resumed run continues the same curve."""
        folder = self.detect_dir or (self.run.path if self.run is not None else None)
        epochs = epoch_history(folder / "log.jsonl") if folder is not None else []
        steps, spe = [], 1
        if job is not None and job.name == JobName.DETECTION:
            last, steps, _ = job.snapshot()
            ev = last.get(Stage.PHASE1)
            spe = ev.steps // max(1, ev.epochs) if ev is not None else 1
        return training_curves(steps, spe, epochs)

    def planted_summary(self) -> dict | None:
        """Precision, recall and planted errors caught, when the table carries ground truth."""
        return Project.planted_summary(self.run, self.store)

    # -- review ---------------------------------------------------------------
    def evidence(self, item: dict, k: int = 4) -> list[tuple[str, str, list[Neighbour]]] | None:
        """Nearest trusted examples (reviewed, else DEFT-clean) of the card's given label and of its top
        suggestion: ``[(role, label, neighbours)]``, or None when the run has no current embeddings yet."""
        run, store = self.run, self.store
        if run is None or store is None:
            return None
        emb = embeddings_path(run)
        stamp = (str(run.path), emb.stat().st_mtime_ns if emb.is_file() else 0)
        if self._evidence is None or self._evidence[0] != stamp:
            self._evidence = (stamp, EvidenceIndex.for_run(run) if stamp[1] else None)
        index = self._evidence[1]
        if index is None:
            return None
        # who is trusted with which label changes only with a decision or new scores: DEFT's verdicts are read
        # with new scores only (at 1M samples a read of the samples table after each decision took seconds),
        # the decisions after each one. The key is read before the tables, so a decision landing in between
        # makes the next card recompute.
        stamp = store.stamp()
        key = (index, str(store.path), stamp)
        if self._trusted != key:
            base = (index, str(store.path), stamp[0])
            if self._verdicts is None or self._verdicts[0] != base:
                samples = run.dataset.samples
                labels, trusted = clean_verdicts(samples["id"], samples["label"], store.scores(["id", "is_clean"]))
                self._verdicts = (base, labels, trusted)
            _, labels, trusted = self._verdicts  # in the index's row order (the dataset's), so its row map fits
            index.trust(*apply_decisions(labels, trusted, index.row, store.current()))
            self._trusted = key
        sid, given = str(item["id"]), str(item["label"])
        out = [("given label", given, index.nearest(sid, given, k))]
        other = next((g.label for g in suggestions(item) if g.label != given), None)
        if other is not None:
            out.append(("top suggestion", other, index.nearest(sid, other, k)))
        return out

    def queue(self, client: str, user: str = "local") -> ReviewQueue:
        """``client``'s review queue (its place and filters restored from the store on first use)."""
        if self.store is None:
            raise RuntimeError("no detection results yet: run detection first (Detect tab)")
        with self._lock:
            q = self.queues.get(client)
            if q is None or q.store is not self.store:
                q = self.queues[client] = ReviewQueue(self.store, self.default_filter(), None, client, user)
                q.restore_place()
            q.user = user
            return q

    @property
    def thumbs(self) -> Path:
        return thumbs_dir(self.settings.runs)

    def export(self, pseudo: bool = False) -> tuple[Path, Path, pd.DataFrame]:
        """The cleaned labels with the audit columns, as ``deft export`` writes them, in the dataset's exports."""
        if self.store is None:
            raise RuntimeError("nothing to export yet: run detection first")
        return self.project.export(self.run, self.store, pseudo)


@dataclass
class Workspaces:
    """One :class:`Workspace` per browser session, created on first use (least recently used dropped past ``cap``)."""

    settings: AppSettings
    cap: int = 64
    _sessions: OrderedDict = field(default_factory=OrderedDict)
    _datasets: Once = field(default_factory=Once)
    _learners: Learners | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self._learners = self._learners or Learners(self.settings.rank_config())

    def get(self, session: str) -> Workspace:
        with self._lock:
            ws = self._sessions.get(session)
            if ws is None:
                ws = self._sessions[session] = Workspace(self.settings, datasets=self._datasets,
                                                         learners=self._learners)
                while len(self._sessions) > self.cap:
                    old_key = next(iter(self._sessions))
                    old = self._sessions[old_key]
                    if old.job is not None and old.job.running:
                        break  # never drop a session whose job is still running
                    self._sessions.pop(old_key)
            self._sessions.move_to_end(session)
            return ws

    def find(self, session: str) -> Workspace | None:
        """The workspace of ``session`` if one was created (:meth:`get`) and is still kept, else None: an id
        from a client creates nothing."""
        with self._lock:
            ws = self._sessions.get(session)
            if ws is not None:
                self._sessions.move_to_end(session)
            return ws
