"""Problem: a recipe run as five numbered stages, every piece made by a ``build_*`` method.

Each ``build_*`` method takes the config section of the same name as its first argument, plus
what the stage hands it. Change a piece by overriding the section (YAML or a dotlist such as
``build_optimizer.conf.lr=1e-3``) or by overriding the method in a subclass. A problem family
(classification, speaker verification) supplies ``build_encoder``, ``build_task`` and
``report``; a recipe supplies ``prepare_data`` and its YAML.
"""
from __future__ import annotations

import datetime
import errno
import functools
import inspect
import json
import logging
import shutil
import signal
import sys
import tempfile
import traceback
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import DataLoader

from framework import config as cfglib
from framework import schedules
from framework import distributed, feature_cache, inference, interrupts, workspace
from framework.audio.dataset import AudioDataset, SkippedItems, collate_padded, read_manifest
from framework.audio.io import screen_manifest
from framework.audio.samplers import BATCH_SAMPLERS
from framework.checkpoint import CheckpointDir
from framework.encoder import CategoryEncoder
from framework.errors import ConfigError, UserError
from framework.files import existing_parent, read_json
from framework.models import augment
from framework.models.downstream import DOWNSTREAMS
from framework.models.featurizer import Featurizer
from framework.models.model import UpstreamDownstreamModel
from framework.models.upstream import UPSTREAMS
from framework.registry import check_kwargs
from framework.stages import STAGES, StageBook, StageResult, corpus_inputs, stage_index
from framework.trainer import Trainer, TrainConfig, seed_everything

log = logging.getLogger("framework.problem")

MODEL_SECTIONS = ("build_dataset", "build_batch_sampler", "build_collate_fn", "build_upstream",
                  "build_featurizer", "build_downstream", "build_model", "build_augmentation",
                  "build_task", "build_optimizer", "build_scheduler", "train")


class Problem:
    """Base class of every problem. Subclasses set ``config_file`` (layered over parents')."""

    #: the sections that decide the trained model (its checkpoints carry them)
    model_sections = MODEL_SECTIONS

    config_file: str | None = "problem.yaml"  # the run keys every problem shares
    #: config sections (and run keys) whose values decide each stage's result
    stage_sections = {
        "prepare_data": ("prepare_data",),
        "build_encoder": ("build_encoder",),
        # world_size: per-process batches of b on N processes train like one batch of N·b
        "train": MODEL_SECTIONS + ("eval_batch", "world_size"),
        "evaluate": ("evaluate", "test_ckpt_dir", "test_ckpt_steps", "eval_batch"),
        "report": ("report",),
    }

    # -- config ---------------------------------------------------------------------------------
    @classmethod
    def problem_name(cls) -> str:
        """The name stored in target_dir and checkpoints: ``module:Class``."""
        return f"{cls.__module__}:{cls.__qualname__}"

    @classmethod
    def config_files(cls) -> list[Path]:
        files = []
        for klass in reversed(cls.__mro__):
            name = klass.__dict__.get("config_file")
            if name:
                near = Path(inspect.getfile(klass))
                files.append(cfglib.resolve_config_file(name, near))
        if not files:
            raise ConfigError(f"{cls.__name__} names no config_file")
        return files

    @classmethod
    def default_config(cls) -> DictConfig:
        return OmegaConf.merge(*(OmegaConf.load(f) for f in cls.config_files()))

    @classmethod
    def config_comments(cls) -> dict[str, str]:
        """Dotted key → comment, a recipe's over its family's; a recipe's comment that
        states no ``(must be ...)`` rule keeps the rule of the key it overrides."""
        comments: dict[str, str] = {}
        for path in cls.config_files():
            for key, text in cfglib.yaml_comments(path.read_text()).items():
                inherited = cfglib.value_rules({key: comments.get(key, "")})
                if inherited and not cfglib.value_rules({key: text}):
                    text = f"{text} (must be {inherited[key]})"
                comments[key] = text
        return comments

    @classmethod
    def compose_config(cls, config_files=(), dotlist=(), overrides: dict | None = None):
        """defaults < each ``--config`` file < dotlist < ``overrides`` (Python keywords)."""
        cfg = cls.default_config()
        for path in config_files:
            cfg = cfglib.merge_layer(cfg, cfglib.load_yaml(path), f"--config {path}")
        cfg = cfglib.merge_layer(cfg, cfglib.parse_dotlist(dotlist), "command line")
        cfglib.replace_open_mappings(cfg, dotlist)
        cfg = cfglib.merge_layer(cfg, overrides or {}, "run() arguments")
        comments = cls.config_comments()
        cfglib.check_complete(cfg, comments)
        cfglib.check_values(cfg, comments)
        cls.resolve_sample_rate(cfg)
        return cfg

    @classmethod
    def resolve_sample_rate(cls, cfg: DictConfig) -> None:
        """``build_dataset.sample_rate: null`` becomes the upstream's rate (audio is resampled
        to it when read); a set rate that differs from the upstream's is refused."""
        upstream = UPSTREAMS.get(cfg.build_upstream.name, "build_upstream.name")
        expected = upstream.expected_sample_rate(cfglib.to_plain(cfg.build_upstream.conf))
        given = cfg.build_dataset.sample_rate
        if given is None:
            cfg.build_dataset.sample_rate = expected
        elif given != expected:
            raise ConfigError(f"build_dataset.sample_rate={given} but upstream "
                              f"'{cfg.build_upstream.name}' takes {expected} Hz audio; set "
                              f"build_dataset.sample_rate={expected} or null (the upstream's "
                              "rate: audio is resampled to it when read)")

    def check_builders(self, cfg: DictConfig) -> None:
        """Fail before stage 0 on a wrong name or argument for any named building block, a
        schedule value out of range, an unknown or unusable ``train.precision``, a CNN
        to freeze that the upstream does not have, or a bad ``build_augmentation`` (a
        noise folder without wavs, SNR bounds reversed, a speed factor out of range)."""
        downstream_given = dict.fromkeys(("input_size", "output_size", "input_stride"))
        for section, registry, given in (("build_upstream", UPSTREAMS, None),
                                         ("build_downstream", DOWNSTREAMS, downstream_given)):
            conf = cfg[section]
            check_kwargs(registry.get(conf.name, f"{section}.name"), conf.conf,
                         f"{section}.conf", given)
        upstream_conf = cfglib.to_plain(cfg.build_upstream.conf)
        UPSTREAMS.get(cfg.build_upstream.name).check_conf(upstream_conf)
        optimizer = getattr(torch.optim, cfg.build_optimizer.name, None)
        if not inspect.isclass(optimizer):
            raise ConfigError(f"build_optimizer.name: '{cfg.build_optimizer.name}' is not a "
                              f"class in torch.optim")
        check_kwargs(optimizer, cfg.build_optimizer.conf, "build_optimizer.conf")
        schedules.check(cfg.build_scheduler.name, cfglib.to_plain(cfg.build_scheduler.conf),
                        cfg.train.total_steps)
        augment.check(cfglib.to_plain(cfg.get("build_augmentation")))
        device = cfg.device if cfg.device != "auto" else \
            "cuda" if torch.cuda.is_available() else "cpu"
        TrainConfig.check_precision(cfg.train.get("precision", "fp32"), device.split(":")[0])
        freezable = [n for n in UPSTREAMS.names()
                     if hasattr(UPSTREAMS.get(n), "freeze_feature_encoder")]
        if cfg.build_model.get("freeze_feature_encoder") and cfg.build_upstream.name \
                not in freezable:
            raise ConfigError(f"build_model.freeze_feature_encoder=true: upstream "
                              f"'{cfg.build_upstream.name}' has no CNN feature encoder to "
                              f"freeze (these have: {', '.join(freezable)})")

    # -- run ------------------------------------------------------------------------------------
    #: stages run by rank 0 alone while the other processes wait (train and evaluate shard)
    main_only_stages = ("prepare_data", "build_encoder", "report")

    def run(self, config_files=(), dotlist=(), **overrides) -> dict:
        """Run stages ``start``..``stop``. Keywords are run keys or whole sections, e.g.
        ``run(target_dir="exp/kws", stop="train", train={"total_steps": 100})``.
        Returns the stage records of target_dir.

        The whole command is checked before anything is written to target_dir; then
        target_dir is locked for the invocation (one run at a time). Errors and interruptions
        are written to ``log.txt`` too; an interruption says where to resume."""
        overrides = {k: v for k, v in overrides.items() if v is not None or k in ("stop",)}
        cfg = self.compose_config(config_files, dotlist, overrides)
        self.check_command(cfg)
        self.dist = distributed.resolve(cfg.world_size, cfg.rank)
        cfg.world_size, cfg.rank = self.dist.world_size, self.dist.rank
        self.cfg, self.trainer, self.current_stage = cfg, None, None
        self.target_dir = Path(cfg.target_dir).resolve()
        self.device = pick_device(distributed.local_device(cfg.device, self.dist))
        with interrupts.handling():
            return self.run_in_process_group()

    def check_command(self, cfg: DictConfig) -> None:
        """Every check that needs no stage output: builders, stage range, target_dir."""
        self.check_builders(cfg)
        start, stop = stage_index(cfg.start, 0), stage_index(cfg.stop, len(STAGES) - 1)
        if start > stop:
            raise ConfigError(f"start={cfg.start} comes after stop={cfg.stop}: nothing to run "
                              f"(stages: {', '.join(f'{i} {n}' for i, n in enumerate(STAGES))})")
        workspace.check_target_dir(Path(cfg.target_dir).resolve(), self.problem_name())
        self.check_splits(cfg)

    def check_splits(self, cfg: DictConfig) -> None:
        """``evaluate.splits`` must name manifests that stage 0 will write (asked of
        ``prepare_data`` with ``get_path_only``, in a scratch folder)."""
        with tempfile.TemporaryDirectory() as scratch:
            planned = self.prepare_data(cfglib.to_plain(cfg.prepare_data), Path(scratch),
                                        Path(scratch), get_path_only=True)
        unknown = [s for s in cfg.evaluate.splits if s not in planned or s == "train"]
        if unknown:
            raise ConfigError(f"evaluate.splits: no manifest {unknown}; stage 0 writes "
                              f"{', '.join(s for s in planned if s != 'train')}")

    def run_in_process_group(self) -> dict:
        distributed.start(self.dist, self.device, self.cfg.dist_backend, self.cfg.dist_timeout)
        self.lock = workspace.TargetLock(self.target_dir)
        try:
            records = self.run_stages()
        except BaseException as err:
            distributed.stop(self.dist, clean=False)
            clear = self.fatal(err)
            if clear is err:
                raise
            raise clear from err
        finally:
            self.lock.release()
        distributed.stop(self.dist)
        return records

    def fatal(self, err: BaseException) -> BaseException:
        """The error to raise for ``err`` (a clear one where possible), logged to log.txt."""
        if isinstance(err, (KeyboardInterrupt, interrupts.Interrupted)):
            err = self.interruption(err)
        elif isinstance(err, RuntimeError) and self.dist.enabled \
                and distributed.is_peer_failure(err):
            err = distributed.peer_failure(self.dist, err)
        elif isinstance(err, OSError) and err.errno == errno.ENOSPC:
            err = disk_full(err, self.target_dir, self.cache_dir)
        if isinstance(err, interrupts.Interrupted):
            workspace.log_to_file(self.target_dir, str(err), logging.WARNING)
        elif isinstance(err, UserError):
            workspace.log_to_file(self.target_dir, f"error: {err}")
        elif isinstance(err, Exception):
            log_traceback(self.target_dir, err)
        return err

    def interruption(self, err: BaseException) -> interrupts.Interrupted:
        signum = getattr(err, "signum", signal.SIGINT)
        where = f"stage {STAGES.index(self.current_stage)} {self.current_stage}" \
            if self.current_stage else "setup"
        if self.trainer is not None:
            where += f" at step {self.trainer.progress.step}"
            saved = self.trainer.ckpts.latest()
            where += f"; last checkpoint step {checkpoint_step(saved)}" if saved \
                else "; no checkpoint yet"
        return interrupts.Interrupted(signum, f"interrupted ({signal.Signals(signum).name}) in "
                                              f"{where}; run the same command to resume")

    def run_stages(self) -> dict:
        cfg = self.cfg
        self.dist.on_main(self.open_target_dir, "setting up target_dir")
        workspace.setup_logging(self.target_dir if self.dist.is_main else None,
                                rank=self.dist.rank if self.dist.enabled else None)
        self.dist.on_main(self.log_opening, "logging")
        if self.dist.enabled:
            log.info("distributed run: %s", distributed.describe(self.dist))
        self.book = StageBook(self.target_dir)
        start, stop = stage_index(cfg.start, 0), stage_index(cfg.stop, len(STAGES) - 1)
        # earlier stages must exist and chain together: later stages use their outputs
        self.dist.on_main(lambda: [self.book.require(STAGES[i]) for i in range(start)],
                          "checking earlier stages")
        for index in range(start, stop + 1):
            self.run_stage(STAGES[index])
        return {name: self.book.read(name) for name in STAGES}

    def open_target_dir(self) -> None:
        workspace.claim(self.target_dir, self.problem_name())
        self.lock.acquire()
        self.leftovers = [*workspace.remove_leftovers(self.target_dir),
                          *workspace.remove_leftovers(self.cache_dir)]
        workspace.record_invocation(self.target_dir, self.cfg)

    def log_opening(self) -> None:
        workspace.log_header(log)
        if self.lock.stale:
            log.warning("took over the lock of a run that stopped without releasing it (%s)",
                        self.lock.stale)
        for path in self.leftovers:
            log.info("removed a leftover of an interrupted write: %s", path)

    def attach(self, target_dir, device: str = "cpu") -> "Problem":
        """Work on a finished target_dir (scoring, prediction): its last config and records."""
        self.target_dir = Path(target_dir).resolve()
        owner = workspace.owner(self.target_dir)
        if owner != self.problem_name():
            raise UserError(f"{self.target_dir} belongs to problem '{owner}', not "
                            f"'{self.problem_name()}'")
        self.cfg = OmegaConf.load(self.target_dir / "config.yaml")
        self.dist = distributed.Distributed()
        self.device = pick_device(device)
        self.book = StageBook(self.target_dir)
        return self

    def stage_config(self, name: str) -> dict:
        """The config sections and run keys that decide stage ``name``'s result (plain);
        sections this problem's config does not have are left out (fingerprints stay)."""
        return {key: cfglib.to_plain(self.cfg[key]) if isinstance(self.cfg[key], DictConfig)
                else self.cfg[key] for key in self.stage_sections[name] if key in self.cfg}

    def run_stage(self, name: str) -> None:
        index = STAGES.index(name)
        sections = self.stage_config(name)
        current = self.dist.on_main(
            lambda: not self.cfg.force and self.book.is_current(name, sections), "stage check")
        if current:
            log.info("stage %d %s: up to date, skipped (force=true reruns it)", index, name)
            return
        log.info("stage %d %s: running", index, name)
        self.current_stage = name
        stage = getattr(self, f"stage_{name}")
        if name in self.main_only_stages:
            self.dist.on_main(lambda: self.record_stage(name, sections, stage(self.cfg)),
                              f"stage {index} {name}")
        else:
            result = stage(self.cfg)
            self.dist.on_main(lambda: self.record_stage(name, sections, result),
                              f"recording stage {index} {name}")

    def record_stage(self, name: str, sections: dict, result: StageResult) -> None:
        self.book.write(name, sections, result)
        stale = self.book.stale_after(name)
        log.info("stage %d %s: done%s", STAGES.index(name), name,
                 f"; now stale: {', '.join(stale)}" if stale else "")

    def artifact(self, stage: str, key: str) -> Path:
        return self.book.resolve(self.book.require(stage)["outputs"][key])

    @property
    def cache_dir(self) -> Path:
        return Path(self.cfg.cache_dir) if self.cfg.cache_dir else self.target_dir / "cache"

    # -- stage 0 and 1 ----------------------------------------------------------------------------
    def stage_prepare_data(self, cfg) -> StageResult:
        manifests = self.prepare_data(cfglib.to_plain(cfg.prepare_data), self.fresh_data_dir(),
                                      self.cache_dir, get_path_only=False)
        for split, csv in manifests.items():
            self.screen(split, csv)
        return StageResult(outputs=manifest_outputs(manifests),
                           inputs=corpus_inputs(cfglib.to_plain(cfg.prepare_data)))

    def fresh_data_dir(self) -> Path:
        """``target_dir/data``, with no excluded-audio list left from an earlier run."""
        data_dir = self.target_dir / "data"
        data_dir.mkdir(exist_ok=True)
        (data_dir / "excluded.csv").unlink(missing_ok=True)
        return data_dir

    def screen(self, name: str, csv: Path) -> None:
        """Check every file of a manifest (``wav_path``); unusable ones leave the manifest
        for ``data/excluded.csv`` with the reason; a ``duration`` column is added."""
        excluded = self.target_dir / "data" / "excluded.csv"
        result = screen_manifest(csv, excluded, num_workers=max(1, self.cfg.num_workers),
                                 desc=f"check {name} audio")
        log.info("%s: %d files kept, %d excluded", name, result.kept, result.excluded)
        if result.excluded:
            log.warning("%d unusable audio files are listed with reasons in %s",
                        result.excluded, excluded)

    def prepare_data(self, prepare_data: dict, target_dir: Path, cache_dir: Path,
                     get_path_only: bool = False) -> dict[str, Path]:
        """Parse the corpus into manifests; return {"train": csv, "valid": csv, "test": csv,
        ...} (every split but train and valid is a test set). With ``get_path_only`` only
        check the options and return the paths, reading and writing nothing (s3prl's
        convention; it is asked before stage 0, to check ``evaluate.splits``)."""
        raise NotImplementedError(f"{type(self).__name__} must implement prepare_data")

    def stage_build_encoder(self, cfg) -> StageResult:
        csvs = self.manifests()
        path = self.build_encoder(cfglib.to_plain(cfg.build_encoder), self.target_dir,
                                  self.cache_dir, csvs["train"], csvs["valid"],
                                  {k: v for k, v in csvs.items() if k not in ("train", "valid")})
        return StageResult(outputs={"encoder": str(Path(path).resolve())})

    def manifests(self) -> dict[str, Path]:
        outputs = self.book.require("prepare_data")["outputs"]
        return {k[: -len("_csv")]: self.book.resolve(v) for k, v in outputs.items()
                if k.endswith("_csv")}

    # -- model pieces -----------------------------------------------------------------------------
    def build_upstream(self, build_upstream: dict):
        return UPSTREAMS.build(build_upstream["name"], build_upstream.get("conf"),
                               "build_upstream.conf")

    def build_featurizer(self, build_featurizer: dict, upstream):
        return Featurizer(upstream, **build_featurizer)

    def build_downstream(self, build_downstream: dict, downstream_input_size: int,
                         downstream_output_size: int, downstream_input_stride: int):
        return DOWNSTREAMS.build(build_downstream["name"], build_downstream.get("conf"),
                                 "build_downstream.conf", input_size=downstream_input_size,
                                 output_size=downstream_output_size,
                                 input_stride=downstream_input_stride)

    def build_model(self, build_model: dict, model_output_size: int, build_upstream: dict,
                    build_featurizer: dict, build_downstream: dict,
                    build_augmentation: dict | None = None):
        upstream = self.build_upstream(build_upstream)
        featurizer = self.build_featurizer(build_featurizer, upstream)
        downstream = self.build_downstream(build_downstream, featurizer.output_size,
                                           model_output_size, featurizer.downsample_rate)
        augmentation = self.build_augmentation(build_augmentation,
                                               getattr(upstream, "sample_rate", 16000))
        return UpstreamDownstreamModel(upstream, featurizer, downstream, **build_model,
                                       augmentation=augmentation)

    def build_augmentation(self, build_augmentation: dict | None, sample_rate: int):
        """Training-time augmentation (:mod:`framework.models.augment`) for audio at
        ``sample_rate`` Hz, or None when the section is absent or all off."""
        return augment.build(build_augmentation, sample_rate)

    def build_optimizer(self, build_optimizer: dict, parameters):
        """The torch.optim class ``name`` with ``conf`` over ``parameters``: named groups of
        trainable parameters (``{"others": [...], "upstream": [...]}``, see
        :func:`parameter_groups`), each a param group of that ``name`` (empty ones left
        out), or a plain list (one group). The ``upstream`` group's learning rate is
        ``upstream_lr`` (null: ``conf.lr``); the others' is ``conf.lr``."""
        groups = parameters.items() if isinstance(parameters, dict) else [("all", parameters)]
        upstream_lr, param_groups = build_optimizer.get("upstream_lr"), []
        for name, params in groups:
            own = {"lr": upstream_lr} if name == "upstream" and upstream_lr is not None else {}
            if params := list(params):
                param_groups.append({"name": name, "params": params, **own})
        if upstream_lr is not None and not any(g["name"] == "upstream" for g in param_groups):
            log.warning("build_optimizer.upstream_lr=%g is unused: no upstream parameter "
                        "trains (build_model.upstream_trainable=false?)", upstream_lr)
        return getattr(torch.optim, build_optimizer["name"])(param_groups,
                                                             **build_optimizer.get("conf", {}))

    def build_scheduler(self, build_scheduler: dict, optimizer):
        """A schedule of :mod:`framework.schedules` (``warmup``, given this run's
        ``train.total_steps``) or a torch.optim.lr_scheduler class, with ``conf``."""
        return schedules.build(build_scheduler["name"], build_scheduler.get("conf", {}),
                               optimizer, self.cfg.train.total_steps)

    # -- data pieces ------------------------------------------------------------------------------
    def build_dataset(self, build_dataset: dict, target_dir: Path, cache_dir: Path, mode: str,
                      data_csv: Path, encoder_path: Path):
        raise NotImplementedError

    def build_batch_sampler(self, build_batch_sampler: dict, target_dir: Path, cache_dir: Path,
                            mode: str, data_csv: Path, dataset):
        conf = dict(build_batch_sampler[mode])
        name = conf.pop("name", "fixed")
        common = {"seed": self.cfg.train.seed, "world_size": self.dist.world_size,
                  "rank": self.dist.rank, "pad_last": mode == "train"}
        if name == "balanced":
            return BATCH_SAMPLERS.build(name, conf, f"build_batch_sampler.{mode}",
                                        labels=dataset.labels, **common)
        if name == "duration":
            conf.setdefault("shuffle", mode == "train")
            return BATCH_SAMPLERS.build(name, conf, f"build_batch_sampler.{mode}",
                                        durations=dataset.item_durations(), **common)
        conf.setdefault("shuffle", mode == "train")
        return BATCH_SAMPLERS.build(name, conf, f"build_batch_sampler.{mode}",
                                    num_items=len(dataset), **common)

    def build_collate_fn(self, build_collate_fn: dict, mode: str):
        return collate_padded

    def build_loader(self, cfg, mode: str, data_csv: Path, model=None) -> DataLoader:
        """Dataset + batch sampler + collate for one manifest, from the sections in ``cfg``.
        Given the ``model``, a frozen learned upstream's features come from the feature cache
        (:mod:`framework.feature_cache`) when ``build_upstream.cache_features`` is on."""
        with self.dist.main_first():  # rank 0 builds a shared waveform cache, then the rest
            dataset = self.build_dataset(cfglib.to_plain(cfg.build_dataset), self.target_dir,
                                         self.cache_dir, mode, data_csv, self.artifact(
                                             "build_encoder", "encoder"))
        collate = self.build_collate_fn(cfglib.to_plain(cfg.build_collate_fn), mode)
        if model is not None and uses_feature_cache(cfg, model, dataset, mode):
            dataset, collate = self.cached_features(model, dataset)
        sampler = self.build_batch_sampler(cfglib.to_plain(cfg.build_batch_sampler),
                                           self.target_dir, self.cache_dir, mode, data_csv,
                                           dataset)
        workers = self.cfg.num_workers
        # its own generator: each iterator draws a base seed, and from the global RNG that
        # draw would shift dropout masks after a resume mid-epoch (not bitwise any more)
        generator = torch.Generator().manual_seed(self.cfg.train.seed + self.dist.rank)
        return DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                          num_workers=workers, prefetch_factor=4 if workers else None,
                          generator=generator)

    def cached_features(self, model, audio):
        """(dataset of cached hidden states, its collate) over ``audio``; missing entries are
        extracted first."""
        layers = model.featurizer.layers
        store = feature_cache.FeatureStore(self.cache_dir, model.upstream.identity(),
                                           layers)
        entries = feature_cache.entries_for(store, audio)
        feature_cache.extract_missing(store, model.upstream, audio, entries, self.device,
                                      self.dist)
        max_secs = audio.max_frames / audio.sample_rate if audio.max_frames else None
        dataset = feature_cache.CachedFeatureDataset(
            audio, store, entries, audio.sample_rate / model.upstream.downsample_rate,
            max_secs, audio.crop)
        return dataset, functools.partial(feature_cache.collate_features, layers=layers)

    # -- stage 2: train ---------------------------------------------------------------------------
    def build_model_and_task(self, cfg, encoder=None):
        """The task (with its model) configured by ``cfg``, on this run's device; ``encoder``
        defaults to stage 1's."""
        encoder = encoder or self.load_encoder(self.artifact("build_encoder", "encoder"))
        model = self.build_model(cfglib.to_plain(cfg.build_model), self.model_output_size(
            encoder, cfg), cfglib.to_plain(cfg.build_upstream), cfglib.to_plain(
            cfg.build_featurizer), cfglib.to_plain(cfg.build_downstream),
            cfglib.to_plain(cfg.get("build_augmentation")))
        return self.build_task(cfglib.to_plain(cfg.build_task), model, encoder).to(self.device)

    def stage_train(self, cfg) -> StageResult:
        train_dir = self.target_dir / "train"
        ckpts = CheckpointDir(train_dir / "checkpoints", cfg.train.keep_num_ckpts)
        fingerprint = self.book.fingerprint("train", self.stage_config("train"), [])
        self.dist.on_main(lambda: open_train_dir(train_dir, fingerprint, cfg, fresh=cfg.force),
                          "preparing train/")
        seed_everything(cfg.train.seed)
        task = self.build_model_and_task(cfg)
        params = parameter_groups(task)
        optimizer = self.build_optimizer(cfglib.to_plain(cfg.build_optimizer), params)
        scheduler = self.build_scheduler(cfglib.to_plain(cfg.build_scheduler), optimizer)
        csvs = self.manifests()
        train_loader = self.build_loader(cfg, "train", csvs["train"], task.model)
        self.trainer = Trainer(TrainConfig(**cfglib.to_plain(cfg.train)), task, optimizer,
                               scheduler, train_loader, self.build_validation(cfg, task),
                               ckpts, self.device, self.checkpoint_meta(cfg, task),
                               make_writer(train_dir) if self.dist.is_main else None, self.dist)
        progress = self.trainer.fit()
        self.write_skipped(self.trainer.skipped, train_dir / "skipped_items.csv", "training")
        self.trainer = None
        if self.dist.is_main:
            (train_dir / "history.json").write_text(json.dumps(progress.histories(), indent=1))
        return StageResult(outputs={"config": str(train_dir / "config.yaml"),
                                    "checkpoints": str(ckpts.folder),
                                    "valid_best": str(ckpts.best_path)})

    def write_skipped(self, skipped: SkippedItems, csv_path: Path, what: str) -> None:
        """Every rank's skipped items, merged into ``csv_path`` by rank 0 (all ranks call)."""
        merged = SkippedItems(item for items in self.dist.gather(skipped.items) for item in items)
        if self.dist.is_main and merged:
            merged.write_csv(csv_path)
            log.warning("%d %s items skipped (unreadable audio); listed in %s", len(merged),
                        what, csv_path)

    def build_validation(self, cfg, task):
        """A function of no arguments returning the validation metrics (called by the
        trainer every ``eval_step``): by default the task evaluated on the valid manifest."""
        loader = self.build_loader(cfg, "valid", self.manifests()["valid"], task.model)
        return lambda: self.evaluate_loader(task, loader)[0]

    def checkpoint_meta(self, cfg, task) -> dict:
        encoder = self.load_encoder(self.artifact("build_encoder", "encoder"))
        return inference.checkpoint_meta(self.problem_name(), cfglib.to_plain(cfg), encoder,
                                         task.model.upstream)

    # -- stage 3: evaluate ------------------------------------------------------------------------
    def evaluate_loader(self, task, loader) -> tuple[dict, object]:
        """(metrics, per-item table) of ``task`` over ``loader`` (at most ``eval_batch``
        batches), through the one evaluator (:class:`framework.inference.Evaluator`)."""
        return inference.Evaluator(self.dist, self.device, self.cfg.eval_batch).run(task,
                                                                                     loader)

    def chosen_checkpoints(self, cfg) -> dict[str, Path]:
        """name → checkpoint file: test_ckpt_dir, else test_ckpt_steps, else valid_best."""
        if cfg.test_ckpt_dir:
            return {Path(cfg.test_ckpt_dir).stem: Path(cfg.test_ckpt_dir)}
        ckpts = CheckpointDir(self.artifact("train", "checkpoints"))
        if not cfg.test_ckpt_steps:
            return {"valid_best": ckpts.best_path}
        available = ckpts.steps()
        missing = [s for s in cfg.test_ckpt_steps if s not in available]
        if missing:
            raise UserError(f"test_ckpt_steps: no checkpoint for steps {missing}; "
                            f"available: {available}")
        return {f"step-{s}": ckpts.step_path(s) for s in cfg.test_ckpt_steps}

    def trained_config(self, warn: bool = True) -> DictConfig:
        """The config the checkpoints were trained with (not today's command line); ``warn``
        logs each section today's config changes."""
        trained = OmegaConf.load(self.artifact("train", "config"))
        if warn:
            self.warn_changed_sections(trained)
        return trained

    def warn_changed_sections(self, trained) -> None:
        for section in self.model_sections:
            if cfglib.to_plain(trained.get(section)) != cfglib.to_plain(self.cfg.get(section)):
                log.warning("%s differs from the trained model's; using the trained one "
                            "(%s)", section, self.artifact("train", "config"))

    def stage_evaluate(self, cfg) -> StageResult:
        self.trained_config()  # warns about sections today's command changes
        models, csvs, results = inference.TrainedModels(self), self.manifests(), []
        for name, path in self.chosen_checkpoints(cfg).items():
            task, state, trained = models.load(path)
            for split in cfg.evaluate.splits:
                if split not in csvs:
                    raise ConfigError(f"evaluate.splits: no '{split}' manifest; have "
                                      f"{', '.join(csvs)}")
                loader = self.build_loader(trained, "test", csvs[split], task.model)
                results.append(self.save_evaluation(task, loader, name, split, state))
        out = self.target_dir / "evaluate" / "results.json"
        if self.dist.is_main:
            out.write_text(json.dumps(results, indent=1, default=str))
        return StageResult(outputs={"results": str(out)})

    def save_evaluation(self, task, loader, ckpt_name: str, split: str, state: dict) -> dict:
        folder = self.target_dir / "evaluate" / ckpt_name / split
        metrics, table = self.evaluate_loader(task, loader)
        if not self.dist.is_main:
            return {}
        folder.mkdir(parents=True, exist_ok=True)
        if table is not None:
            table.to_csv(folder / "predictions.csv", index=False)
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=1, default=str))
        step = state["progress"]["step"]
        log.info("%s (step %d) on %s: %s", ckpt_name, step, split, headline(metrics))
        return {"checkpoint": ckpt_name, "split": split, "step": step,
                "predictions_csv": self.book.relative(folder / "predictions.csv"),
                "metrics_json": self.book.relative(folder / "metrics.json"), "metrics": metrics}

    # -- stage 4: report --------------------------------------------------------------------------
    def stage_report(self, cfg) -> StageResult:
        results = self.evaluation_results()
        report_dir = self.target_dir / "report"
        report_dir.mkdir(exist_ok=True)
        paths = self.report(cfglib.to_plain(cfg.report), results, report_dir)
        log.info("report: %s", paths["report_md"])
        print(f"Report: {paths['report_md']}", file=sys.stderr)
        return StageResult(outputs={k: str(v) for k, v in paths.items()})

    #: keys of an evaluation result that name files (recorded relative to target_dir)
    result_paths = ("predictions_csv", "metrics_json", "scores_csv", "checkpoint_path")

    def evaluation_results(self) -> list[dict]:
        """Stage 3's results, with every file path made absolute for this target_dir."""
        path = self.artifact("evaluate", "results")
        results = read_json(path, "stage 3's results")
        return [{k: str(self.book.resolve(v)) if k in self.result_paths and v else v
                 for k, v in result.items()} for result in results]

    # -- family hooks -----------------------------------------------------------------------------
    #: the train manifest column the default encoder lists (``label``, ``spk``, ...)
    label_column = "label"

    def build_encoder(self, build_encoder, target_dir, cache_dir, train_csv, valid_csv,
                      test_csvs):
        """By default, a JSON list of the values of ``label_column`` in the train manifest."""
        labels = read_manifest(train_csv)[self.label_column]
        return CategoryEncoder.from_labels(labels).save(Path(target_dir) / "encoder.json")

    def load_encoder(self, path: Path):
        return CategoryEncoder.load(path)

    def model_output_size(self, encoder, cfg) -> int:
        """The model's output size (classes, or embedding size) under config ``cfg``."""
        raise NotImplementedError

    def build_task(self, build_task: dict, model, encoder):
        raise NotImplementedError

    def report(self, report: dict, results: list[dict], report_dir: Path) -> dict:
        raise NotImplementedError


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but CUDA is not available; use device=cpu or auto")
    return torch.device(name)


def open_train_dir(train_dir: Path, fingerprint: str, cfg, fresh: bool = False) -> None:
    """Make ``train_dir`` the home of the run configured as ``fingerprint``.

    A run of another configuration is set aside under ``train.runs/<its fingerprint>``, and
    one set aside earlier for this configuration is brought back (so going back to a finished
    configuration finds it instead of retraining). ``fresh`` (``force=true``) sets aside
    even a run of this configuration, as ``train.runs/<fingerprint>-replaced-<time>``, and
    starts from scratch. Nothing is ever deleted."""
    kept = train_dir.with_name("train.runs")
    current = (train_dir / "fingerprint").read_text().strip() \
        if (train_dir / "fingerprint").is_file() else None
    if current is not None and (current != fingerprint or fresh):
        name = current[:16] if current != fingerprint else \
            f"{current[:16]}-replaced-{datetime.datetime.now():%Y%m%d-%H%M%S}"
        aside = unique_path(kept / name)
        aside.parent.mkdir(exist_ok=True)
        train_dir.rename(aside)
        log.warning("%s: the previous training run (%s) is kept in %s", "force=true" if fresh
                    else "training config changed", current[:16], aside)
    earlier = kept / fingerprint[:16]
    if not fresh and not train_dir.exists() and earlier.is_dir():
        earlier.rename(train_dir)
        log.info("found this configuration's earlier training run in %s: continuing it",
                 earlier)
    train_dir.mkdir(parents=True, exist_ok=True)
    for other in sorted(kept.iterdir()) if kept.is_dir() else ():
        log.info("another training run of this target_dir is kept in %s", other)
    cfglib.save_yaml(cfg, train_dir / "config.yaml")
    (train_dir / "fingerprint").write_text(fingerprint)


def unique_path(path: Path) -> Path:
    """``path``, or ``path-2``, ``path-3``, ... : the first that does not exist."""
    candidate, n = path, 1
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}-{n}")
    return candidate


def parameter_groups(task) -> dict[str, list]:
    """``task``'s trainable parameters in their order, as ``{"others": [...], "upstream":
    [...]}``: the upstream's own (empty when it is frozen) and everything else (featurizer,
    downstream, the task's loss)."""
    upstream = {id(p) for p in task.model.upstream.parameters()}
    trainable = [p for p in task.parameters() if p.requires_grad]
    return {"others": [p for p in trainable if id(p) not in upstream],
            "upstream": [p for p in trainable if id(p) in upstream]}


def checkpoint_step(path: Path) -> int:
    """The step of a ``step-00000060.pt`` checkpoint file."""
    return int(Path(path).stem.split("-")[-1])


def disk_full(err: OSError, *folders: Path) -> UserError:
    """A one-line error for ENOSPC naming the file (when known) and the free space."""
    where = f" writing {err.filename}" if err.filename else ""
    free = ", ".join(f"{folder}: {shutil.disk_usage(existing_parent(folder)).free / 2**30:.1f} "
                     f"GiB free" for folder in dict.fromkeys(folders))
    return UserError(f"disk full{where} ({free}); free some space (or point cache_dir "
                     "elsewhere) and run the same command to resume")


def log_traceback(target_dir: Path, err: Exception) -> None:
    """A bug's full traceback in log.txt (the console shows it anyway)."""
    workspace.log_to_file(target_dir, "".join(traceback.format_exception(err)).rstrip())


def uses_feature_cache(cfg, model, dataset, mode: str = "test") -> bool:
    """Whether ``dataset``'s items should be cached features: a frozen, learned upstream
    with ``build_upstream.cache_features`` on, over whole utterances (an AudioDataset), and
    for ``mode`` train no waveform augmentation (noise, speed) to apply first."""
    wanted = bool(cfg.build_upstream.get("cache_features", False)) \
        and not model.upstream_trainable and getattr(model.upstream, "learned", False) \
        and isinstance(dataset, AudioDataset)
    augmentation = getattr(model, "augmentation", None)
    if wanted and mode == "train" and getattr(augmentation, "changes_waveform", False):
        log.info("training runs the upstream live, not from the feature cache: "
                 "build_augmentation's noise/speed change the waveform before it")
        return False
    return wanted


def make_writer(folder: Path):
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(folder / "tensorboard"))


def manifest_outputs(manifests: dict) -> dict[str, str]:
    """Stage outputs naming each manifest: ``{"<split>_csv": absolute path}``."""
    return {f"{split}_csv": str(Path(csv).resolve()) for split, csv in manifests.items()}


def headline(metrics: dict) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                     if isinstance(v, float))[:200]
