"""HPM-KD, all six components composed (METHODS.md section 2): ``+strategy=hpmkd``.

1. Teachers (``teachers=[...]`` or the one ``teacher``) are obtained; missing ones are trained
   concurrently (PPP).
2. ACM reads the run history from the shared memory (live, or the sweep's snapshot: see
   ``hpmkd.hpm.source``) and picks T0, alpha, lr, epochs and the chain's epsilon for this setting
   (documented defaults on a cold start); results.json's ``details.acm`` says from which history
   and how many rows. The choice reaches the fits as an explicit ``TrainingChoice`` (lr, epochs,
   MTS) and the chain's method config (T0, alpha); the run's config stays as written, and
   ``details.config`` (the choice) is what the run's history row records.
3. PDC grows the chain; every link and every candidate student distils from the AWMT ensemble
   of all models above it, with MTS driving the temperature.
4. SOM: every model is stored and reused, and the finished run joins the history ACM learns from.

Each component has an off switch, ``strategy.components.<acm|pdc|awmt|mts|ppp|som>=false``:
ACM off uses the configured values; PDC off distils the student straight from the teachers; AWMT
off averages the teachers uniformly; MTS off keeps the temperature at T0; PPP off runs teachers
and jobs one after another; SOM off gives the run a private, empty store (so ACM, if on, starts
cold) and keeps it out of the history.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, replace
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hpmkd.engine.context import RunContext, TrainingChoice
from hpmkd.engine.records import StrategyResult
from hpmkd.hpm.acm import ACMConfig, Prediction
from hpmkd.hpm.record import consult_acm, has_chain
from hpmkd.hpm.source import HistorySource, history_source
from hpmkd.models import count_parameters
from hpmkd.store import ArtifactStore
from hpmkd.strategies.multi_teacher import Trained, ensemble_of, obtain_teachers
from hpmkd.strategies.progressive import build_chain, chain_result
from hpmkd.strategies.registry import register_strategy

log = logging.getLogger("hpmkd")

COMPONENTS = ("acm", "pdc", "awmt", "mts", "ppp", "som")


def configured(cfg: DictConfig) -> ACMConfig:
    """The configuration as written (what runs when ACM is off)."""
    return ACMConfig(
        T0=float(cfg.method.temperature),
        alpha=float(cfg.method.alpha),
        lr=float(cfg.recipe.optimizer.lr),
        epochs=int(cfg.recipe.epochs),
        epsilon=float(cfg.strategy.epsilon),
    )


def choose(ctx: RunContext, teachers: list[Trained]) -> tuple[ACMConfig, dict[str, Any] | None]:
    """The run's configuration, and what ACM based it on (None when ACM is off)."""
    cfg = ctx.cfg
    components = cfg.strategy.components
    if not components.acm:
        return configured(cfg), None
    # SOM off: the run's private store, and so an empty history (ACM's cold start)
    source = history_source(cfg, None if components.som else ctx.store.root)
    _, teacher = max(teachers, key=lambda t: t[1].params)
    prediction = consult_acm(
        cfg,
        ctx.data,
        source=source,
        chain=has_chain(cfg.strategy),
        teacher_params=teacher.params,
        teacher_acc=teacher.val_acc,
        student_params=count_parameters(ctx.build(cfg.student)),
    )
    return prediction.config, _acm_details(prediction, source)


def _acm_details(prediction: Prediction, source: HistorySource) -> dict[str, Any]:
    return {
        "source": prediction.source,
        "predicted_retention": prediction.predicted,
        "n_history": prediction.n_history,
        "n_chain_history": prediction.n_chain_history,
        "epsilon_source": prediction.epsilon_source,
        "history": source.as_dict(),
        "reason": prediction.reason,
    }


def training_choice(cfg: DictConfig, chosen: ACMConfig) -> TrainingChoice:
    """What every fit of the run trains with: the chosen lr and epochs, and MTS from the chosen
    T0 (a constant temperature when MTS is off)."""
    mts = OmegaConf.create(
        OmegaConf.to_container(cfg.strategy.mts, resolve=True) | {"name": "mts", "t0": chosen.T0}
    )
    return TrainingChoice(
        lr=chosen.lr, epochs=chosen.epochs, temperature=mts if cfg.strategy.components.mts else None
    )


def chosen_method(cfg: DictConfig, chosen: ACMConfig) -> dict[str, Any]:
    """The run's method with the chosen T0 and alpha, weighting its teachers by attention (AWMT)
    or uniformly."""
    method: dict[str, Any] = OmegaConf.to_container(cfg.method, resolve=True)  # type: ignore[assignment]
    weighting = "attention" if cfg.strategy.components.awmt else "uniform"
    return method | {"temperature": chosen.T0, "alpha": chosen.alpha, "weighting": weighting}


@register_strategy("hpmkd")
def run(ctx: RunContext) -> StrategyResult:
    components = ctx.cfg.strategy.components
    if not components.som:
        ctx = replace(ctx, store=ArtifactStore(ctx.out_dir / "private_store"))
    teachers = obtain_teachers(ctx, parallel=components.ppp)
    chosen, acm = choose(ctx, teachers)
    ctx = replace(ctx, choice=training_choice(ctx.cfg, chosen))
    method_cfg = chosen_method(ctx.cfg, chosen)

    def combine(available: Any) -> Trained:
        return ensemble_of(ctx, available, concurrent=components.ppp)

    max_length = ctx.cfg.strategy.max_length if components.pdc else 0
    chain = build_chain(
        ctx, teachers, method_cfg, epsilon=chosen.epsilon, max_length=max_length, combine=combine
    )
    result = chain_result(ctx, chain, method_cfg, "HPM-KD chain", chosen.epsilon)
    result.teacher = max(teachers, key=lambda t: t[1].params)[1]
    result.details |= {
        "components": {name: bool(components[name]) for name in COMPONENTS},
        "config": chosen.as_dict(),
        "acm": acm,
        "teachers": [asdict(r) for _, r in teachers],
    }
    return result
