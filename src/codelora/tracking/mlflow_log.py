"""MLflow: one MLflow run per codelora run, through `MlflowClient`.

The store is `sqlite:///<the run directory's parent>/mlflow.db` with artifacts in
`<parent>/mlartifacts/`, unless MLFLOW_TRACKING_URI names another (a server, a database); the
experiment is MLFLOW_EXPERIMENT_NAME, else "codelora" (a sweep names it after itself). Browse it
with `mlflow ui --backend-store-uri sqlite:///runs/mlflow.db`.

MLflow keeps every value it is sent (a step logged twice shows twice) and cannot delete one, so a
resumed run skips the steps the earlier process logged already. A resumed run repeats those steps
(to 1e-6, as the resume tests hold it), so what MLflow holds is what loss_log.jsonl holds.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from codelora.console import say
from codelora.errors import ConfigError, first_line
from codelora.tracking.state import read_state, write_state

DEFAULT_EXPERIMENT = "codelora"


class MlflowTracker:
    def __init__(self, run_dir: Path, run_name: str, params: dict):
        for noisy in ("mlflow", "alembic"):  # schema migrations and store chatter on the first use
            logging.getLogger(noisy).setLevel(logging.WARNING)
        from mlflow import MlflowClient

        self.run_dir, self.run_name, self.params = run_dir, run_name, params
        local = not os.environ.get("MLFLOW_TRACKING_URI")
        self.store = run_dir.resolve().parent
        self.uri = f"sqlite:///{self.store / 'mlflow.db'}" if local else os.environ["MLFLOW_TRACKING_URI"]
        self.artifacts = (self.store / "mlartifacts").as_uri() if local else None
        self.client = self._open_store(MlflowClient)
        self.run_id: str | None = None
        self.logged: dict[str, int] = {}  # metric -> the last step the tracker run holds

    def _open_store(self, client_class):
        """The client, after one query: a store that cannot be used fails here, before the run."""
        try:
            client = client_class(tracking_uri=self.uri)
            client.search_experiments(max_results=1)
            return client
        except Exception as e:  # MLflow, SQLAlchemy and URI errors alike
            fix = "fix or remove it" if not os.environ.get("MLFLOW_TRACKING_URI") else "check MLFLOW_TRACKING_URI"
            raise ConfigError(f"train.report_to mlflow: cannot use the MLflow store {self.uri}: "
                              f"{type(e).__name__}: {first_line(e)}; {fix}") from None

    def start(self, history: list[tuple[int, dict[str, float]]]) -> None:
        self.run_id = self._continued_run() or self._new_run()
        for step, metrics in history:  # what the checkpoint knows and MLflow does not (normally nothing)
            self.log(metrics, step)

    def _continued_run(self) -> str | None:
        """The tracker run this run directory started, when it is being resumed."""
        state = read_state(self.run_dir).get("mlflow") or {}
        if state.get("tracking_uri") != self.uri or not state.get("run_id"):
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(state["run_id"])
        except MlflowException:
            say(f"MLflow run {state['run_id']} is not in {self.uri} any more; starting a new MLflow run")
            return None
        self.client.update_run(run.info.run_id, status="RUNNING")
        for key in run.data.metrics:
            history = self.client.get_metric_history(run.info.run_id, key)
            self.logged[key] = max(m.step for m in history)
        say(f"continuing MLflow run {run.info.run_id} ({self.uri})")
        return run.info.run_id

    def _new_run(self) -> str:
        from mlflow.entities import Param

        name = os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = self.client.get_experiment_by_name(name)
        experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(
            name, artifact_location=self.artifacts)
        run = self.client.create_run(experiment_id, run_name=self.run_name,
                                     tags={"codelora.run_dir": str(self.run_dir.resolve())})
        params = [Param(k, str(v)[:6000]) for k, v in self.params.items()]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self.client.log_batch(run.info.run_id, params=params[i:i + 100])
        write_state(self.run_dir, "mlflow", {"tracking_uri": self.uri, "run_id": run.info.run_id,
                                             "experiment_id": experiment_id})
        say(f"MLflow run {run.info.run_id} in experiment {name!r} ({self.uri})")
        return run.info.run_id

    def log(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        new = [Metric(k, v, now, step) for k, v in metrics.items() if step > self.logged.get(k, -1)]
        if new:
            self.client.log_batch(self.run_id, metrics=new, synchronous=True)
            for m in new:
                self.logged[m.key] = step

    def log_artifacts(self, files: list[Path]) -> None:
        for path in files:
            if path.is_dir():
                self.client.log_artifacts(self.run_id, str(path), artifact_path=path.name)
            else:
                self.client.log_artifact(self.run_id, str(path))

    def finish(self, status: str) -> None:
        if self.run_id is not None:
            self.client.set_terminated(self.run_id, status=status)
            self.run_id = None
