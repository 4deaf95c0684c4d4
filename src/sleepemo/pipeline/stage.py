"""The stage runner: the table of stages and model families (:data:`STAGES`), and the work
every stage does around its own.

Every stage runs as ``sleepemo stage <name>`` (what ``sleepemo run`` starts, one process
per stage; the ``src/NN_*.py`` scripts are the same command), which is
``stage.main(<name>, <doc>, <body>)`` with the stage's body from :mod:`sleepemo.cli`:

- **opening** (:func:`open_stage`): load and validate the config (profile, ``--set``),
  resolve the data folder and the artefact folder ``<out>``, save the resolved config,
  and for stages that run PyTorch flush denormal floats to zero (before torch starts its
  threads), set the thread count and choose the device from the stage's config section;
- the stage's **body** (``run(stage) -> StageOutput`` of its trainer module,
  :attr:`StageSpec.module`), which writes its results through
  :mod:`sleepemo.pipeline.artefacts`;
- **closing** (:meth:`Stage.run`): wall time, peak memory, threads and device are added to
  the body's metrics and written to ``<out>/<folder>/metrics.json``; the body's evidence
  (Markdown) to ``<out>/<folder>/evidence.md``; the summary is printed;
- its **log**: what the stage prints goes to the console and to ``<out>/run.log``
  (:mod:`sleepemo.runlog`; ``--quiet`` keeps only warnings and errors on the console).

Each stage writes only inside its own folder. The run's score table and report are written
by one owner, :func:`sleepemo.pipeline.report.write_report` (stage 07, or
``python -m sleepemo.pipeline.report <out>``), from the scores each result carries.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import resource
import sys
import time
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping

from sleepemo import runlog
from sleepemo.config import Config, PROFILES, load_config, project_dir, save_config
from sleepemo.data.folds import read_folds
from sleepemo.data.location import resolve_data_dir
from sleepemo.data.reader import load_dataset
from sleepemo.errors import guarded
from sleepemo.io import write_json, write_text
from sleepemo.pipeline.runlock import command_line, hold


@dataclass(frozen=True)
class StageSpec:
    """One stage of the pipeline; for a model family, everything it declares.

    The modules it names are dotted strings, imported only when asked for
    (:meth:`trainer_module`, :meth:`predictor_module`, :meth:`variant_table`): listing the
    stages, or a command that needs no model, imports neither PyTorch nor the families.
    """

    number: str           # "03"
    name: str             # "experts": how code, scripts and artefact folders name the stage
    section: str | None   # its config section (device, num_threads), if any
    torch: bool           # opens with the PyTorch set-up
    title: str
    #: the module whose ``run(stage)`` is the body (it trains the family's models);
    #: default ``sleepemo.<name>.stage``
    trainer: str = ""
    #: the module whose ``load(run, result) -> Predictor`` rebuilds the stage's results for
    #: ``sleepemo predict`` (:func:`sleepemo.predict.load.load_predictor`); None: its results
    #: (if any) cannot predict new recordings
    predictor: str | None = None
    #: ``module:attribute`` of what the family's results vary over: variant name -> its
    #: small frozen dataclass of the config (``ExpertsConfig.VARIANTS``), model name -> class
    #: (the baselines' registry), or a tuple of names; None: no variants
    variants: str | None = None

    @property
    def script(self) -> str:
        """Its script in src/, e.g. ``03_experts.py``."""
        return f"{self.number}_{self.name}.py"

    @property
    def module(self) -> str:
        """The module of its body (its trainer), e.g. ``sleepemo.experts.stage``."""
        return self.trainer or f"sleepemo.{self.name}.stage"

    @property
    def folder(self) -> str:
        """Its folder under the run's artefact folder, e.g. ``03_experts``."""
        return f"{self.number}_{self.name}"

    def trainer_module(self) -> types.ModuleType:
        """Its body's module (``run(stage)``, optionally ``add_arguments``/``options``)."""
        return importlib.import_module(self.module)

    def predictor_module(self) -> types.ModuleType | None:
        """The module of its predictor loader (``load(run, result)``), if it has one."""
        return importlib.import_module(self.predictor) if self.predictor else None

    def variant_table(self) -> Mapping | tuple:
        """Its variants (see :attr:`variants`); empty when it declares none."""
        if not self.variants:
            return {}
        module, _, attribute = self.variants.partition(":")
        return functools.reduce(getattr, attribute.split("."), importlib.import_module(module))


#: The pipeline in order, and the one registry of model families: ``sleepemo run`` runs the
#: stages by number, in this order; ``sleepemo predict`` rebuilds a result with its stage's
#: ``predictor``. Adding a stage or family: a line here, a config section, its package
#: (trainer ``stage.py``, predictor ``predict.py``), its entry in sleepemo.cli (stage_entry)
#: and a script in src/ (docs/extending.md, docs/architecture.md).
STAGES: tuple[StageSpec, ...] = (
    StageSpec("00", "folds", None, False, "LOPO folds", trainer="sleepemo.pipeline.folds"),
    StageSpec("01", "baselines", "baselines", False, "Baselines",
              predictor="sleepemo.baselines.predict", variants="sleepemo.baselines:REGISTRY"),
    StageSpec("02", "mae", "mae", True, "Band features and masked-autoencoder pre-training",
              predictor="sleepemo.mae.predict", variants="sleepemo.mae.stage:PROBES"),
    StageSpec("03", "experts", "experts", True, "Channel experts meta-learned with FOMAML",
              predictor="sleepemo.experts.predict",
              variants="sleepemo.config:ExpertsConfig.VARIANTS"),
    StageSpec("04", "fusion", "fusion", True, "Spatiotemporal fusion",
              predictor="sleepemo.fusion.predict",
              variants="sleepemo.config:FusionConfig.VARIANTS"),
    StageSpec("05", "rl", "rl", True, "Reinforcement-learning heads",
              predictor="sleepemo.rl.predict", variants="sleepemo.config:RLConfig.HEADS"),
    StageSpec("06", "ensemble", "ensemble", False, "Optuna ensemble",
              predictor="sleepemo.predict.ensemble"),
    StageSpec("07", "submission", None, False, "Submission", trainer="sleepemo.kaggle.stage"),
)


def spec(name: str) -> StageSpec:
    """A stage by name (``experts``), number (``03``) or folder (``03_experts``)."""
    for s in STAGES:
        if name in (s.name, s.number, s.folder):
            return s
    raise KeyError(f"unknown stage {name!r}; stages: {[s.name for s in STAGES]}")


def stage_dir(out: str | Path, name: str) -> Path:
    """``<out>/<NN_name>``: the folder of a stage's artefacts."""
    return Path(out) / spec(name).folder


def flush_denormals() -> bool:
    """Treat denormal floats as zero on the CPU (FTZ/DAZ); returns whether supported.

    Once the 200-token MAE encoder had learned peaked attention, the backward pass of
    PyTorch's fused CPU attention met many denormal numbers and training steps slowed
    down (docs/benchmarks.md). Threads inherit the setting when they are created, so this
    must run before torch starts its worker threads: the stage runner does it first thing
    for every PyTorch stage.
    """
    import torch

    return torch.set_flush_denormal(True)


def choose_device(setting: str = "auto"):
    """``auto`` -> CUDA when present, else the CPU; otherwise the named device."""
    import torch

    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(setting)


@dataclass
class StageOutput:
    """What a stage's body returns: metrics (to ``metrics.json``), a summary (printed)
    and evidence (Markdown for the run's report)."""

    metrics: dict = field(default_factory=dict)
    summary: str = ""
    evidence: str = ""


@dataclass
class Stage:
    """What a stage's body works with."""

    cfg: Config
    data_dir: Path
    out: Path
    spec: StageSpec
    progress: bool = True
    log: Callable[[str], None] = print
    started: float = field(default_factory=time.perf_counter)

    @property
    def dir(self) -> Path:
        """This stage's folder, ``<out>/<NN_name>``."""
        return self.out / self.spec.folder

    @property
    def section(self):
        """This stage's config section (None if it has none)."""
        return getattr(self.cfg, self.spec.section) if self.spec.section else None

    @property
    def device(self):
        return choose_device(getattr(self.section, "device", "auto"))

    def dataset(self):

        return load_dataset(self.data_dir, progress=self.progress,
                            bad_values=self.cfg.data.bad_values)

    def folds(self, ds=None):

        folds = read_folds(self.out / "folds.json")
        if ds is not None:
            folds.check(ds)
        return folds

    def seconds(self) -> float:
        return time.perf_counter() - self.started

    def write_evidence(self, markdown: str) -> None:
        """This stage's section of the run report (``<folder>/evidence.md``)."""

        write_text(self.dir / "evidence.md", markdown.rstrip() + "\n")

    def run(self, body: Callable[["Stage"], StageOutput]) -> StageOutput:
        """Run the stage's body, then the closing work (see the module docstring)."""

        output = body(self)
        metrics = dict(output.metrics)
        metrics.update(stage=self.spec.name, stage_seconds=round(self.seconds(), 1),
                       peak_rss_mb=peak_rss_mb(), profile=self.cfg.profile,
                       seed=self.cfg.seed)
        if self.spec.torch:
            import torch

            metrics.update(torch_threads=torch.get_num_threads(), device=str(self.device))
        output.metrics = metrics
        write_json(self.dir / "metrics.json", metrics)
        if output.evidence:
            self.write_evidence(output.evidence)
        return output


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def open_stage(name: str, cfg: Config, data_dir: str | Path, out: str | Path,
               progress: bool = True, log: Callable[[str], None] = print) -> Stage:
    """The opening work of stage ``name`` (see the module docstring)."""
    s = spec(name)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    stage = Stage(cfg, Path(data_dir), out, s, progress, log)
    if s.torch:
        import torch

        flush_denormals()  # first, before torch creates its thread pool
        threads = getattr(stage.section, "num_threads", None)
        if threads:
            torch.set_num_threads(threads)
    return stage


# ------------------------------------------------------------------ scripts
def stage_parser(doc: str, prog: str | None = None) -> argparse.ArgumentParser:
    """Arguments every stage accepts."""

    ap = argparse.ArgumentParser(prog=prog, description=doc, formatter_class=argparse.
                                 RawDescriptionHelpFormatter)
    ap.add_argument("--profile", choices=PROFILES, default="quick")
    ap.add_argument("--data-dir", help="data folder with training/ and testing/ "
                                       "(default: real data if present, else synthetic)")
    ap.add_argument("--out", help="artefact folder (default: output/<profile>-<data name> of "
                                  "the checkout, else of the current folder)")
    ap.add_argument("--set", dest="overrides", action="append", default=[],
                    metavar="KEY=VALUE", help="override a config value, e.g. seed=1")
    ap.add_argument("--no-progress", action="store_true", help="hide progress bars")
    ap.add_argument("--no-lock", action="store_true",
                    help="do not lock <out>: only to run different stages or models side by "
                         "side on one artefact folder on purpose (README: Scaling out)")
    runlog.add_arguments(ap)
    return ap


def resolve_args(args: argparse.Namespace) -> tuple[Config, Path, Path]:
    """The config, data folder and artefact folder of a script's parsed arguments."""

    cfg = load_config(args.profile, args.overrides)
    data_dir = resolve_data_dir(cfg, args.data_dir,
                                log=lambda m: runlog.info(m, stream=sys.stderr))
    out = Path(args.out) if args.out else default_out(cfg, data_dir)
    return cfg, data_dir, out


def default_out(cfg: Config, data_dir: Path) -> Path:
    """``output/<profile>-<data folder name>`` of the project folder
    (:func:`sleepemo.config.project_dir`)."""
    return project_dir() / "output" / f"{cfg.profile}-{Path(data_dir).name}"


def stage_from_args(name: str, args: argparse.Namespace) -> Stage:
    """Open stage ``name`` from a script's parsed arguments (no lock: see :func:`main`)."""
    cfg, data_dir, out = resolve_args(args)
    return open_stage(name, cfg, data_dir, out, progress=not args.no_progress)


def main(name: str, doc: str, body: Callable[..., StageOutput],
         add_arguments: Callable[[argparse.ArgumentParser], None] | None = None,
         argv: list[str] | None = None, prog: str | None = None) -> None:
    """A stage: parse the arguments (``argv``, default the command line's), set up the
    log (:mod:`sleepemo.runlog`), lock ``<out>`` (:mod:`sleepemo.pipeline.runlock`), append to
    ``<out>/run.log``, open, run ``body``, close, log the summary.

    ``body(stage)``, or ``body(stage, args)`` when the stage adds arguments.
    """

    ap = stage_parser(doc, prog)
    if add_arguments:
        add_arguments(ap)
    args = ap.parse_args(argv)
    folder = spec(name).folder
    runlog.setup(folder, runlog.level(args))

    def go():

        # what runs, for the lock's record and the log: "sleepemo stage NAME ..." or the
        # script's command line
        command = command_line([*prog.split(), *(sys.argv[1:] if argv is None else argv)]
                               if prog else None)
        cfg, data_dir, out = resolve_args(args)
        # one run at a time in <out> (sleepemo.pipeline.runlock): taken before anything is written
        with contextlib.nullcontext() if args.no_lock else \
                hold(out, command, folder, log=runlog.warning):
            runlog.attach(out)
            runlog.debug(f"stage {folder}: {command}")
            stage = open_stage(name, cfg, data_dir, out,
                               progress=not (args.no_progress or args.quiet))
            output = stage.run((lambda s: body(s, args)) if add_arguments else body)
        if output.summary:
            runlog.info(output.summary)
        runlog.debug(f"stage {folder}: done in {output.metrics.get('stage_seconds')} s, "
                     f"peak memory {output.metrics.get('peak_rss_mb')} MB")

    try:
        with runlog.capture_stdout():  # print lines of the body and the library: logged
            guarded(go)
    finally:
        runlog.reset()
