"""Predicts the next generation's improvement of the run's best score.

* fewer than ``min_history`` generations (or ``method: ema``): an exponential moving average,
  ``ema <- (1 - alpha) * ema + alpha * x``, started at the first value;
* from then on (``method: arima``, the default): ARIMA(1,0,0) with a constant from statsmodels,
  ``x_t = c + phi * (x_{t-1} - c) + e_t``, fitted to the last ``window`` generations (so that its
  mean ``c`` is the recent rate of improvement, not the big gains of the first generations), its
  one-step forecast. A window with no variation forecasts its last value; a failed or non-finite
  fit falls back to the EMA (the reason is kept).

A forecast below 0 is 0: the best score never goes down.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np

METHODS = ("arima", "ema")


@dataclass(slots=True, frozen=True)
class Prediction:
    value: float
    method: str
    """ema | arima | constant (+ the fallback's reason in ``note``)."""
    history: int
    note: str | None = None


class ImprovementPredictor:
    def __init__(self, method: str = "arima", ema_alpha: float = 0.4, min_history: int = 8, window: int = 8) -> None:
        if method not in METHODS:
            raise ValueError(f"predictor must be one of {', '.join(METHODS)}, got {method!r}")
        if not 0 < ema_alpha <= 1:
            raise ValueError(f"ema_alpha must be in (0, 1], got {ema_alpha}")
        self.method = method
        self.alpha = ema_alpha
        self.min_history = max(3, int(min_history))
        self.window = max(3, int(window))
        self.series: list[float] = []
        self.ema: float | None = None

    def observe(self, improvement: float) -> None:
        x = float(improvement) if math.isfinite(improvement) else 0.0
        self.series.append(x)
        self.ema = x if self.ema is None else (1 - self.alpha) * self.ema + self.alpha * x

    def predict(self) -> Prediction | None:
        n = len(self.series)
        if n == 0 or self.ema is None:
            return None
        if self.method == "ema" or n < self.min_history:
            return Prediction(max(0.0, self.ema), "ema", n)
        y = np.asarray(self.series[-self.window:], dtype=np.float64)
        if float(np.ptp(y)) < 1e-12:
            return Prediction(max(0.0, float(y[-1])), "constant", n)
        try:
            value = arima_forecast(y)
        except Exception as exc:  # noqa: BLE001 - any fitting failure falls back to the EMA
            return Prediction(max(0.0, self.ema), "ema", n, note=f"ARIMA failed ({type(exc).__name__}: {exc})")
        if not math.isfinite(value):
            return Prediction(max(0.0, self.ema), "ema", n, note="ARIMA forecast was not finite")
        return Prediction(max(0.0, value), "arima", n)


def arima_forecast(y: np.ndarray) -> float:
    """One-step forecast of ARIMA(1,0,0) with a constant."""
    from statsmodels.tsa.arima.model import ARIMA

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # convergence and start-parameter warnings on short series
        fit = ARIMA(y, order=(1, 0, 0), trend="c").fit()
        return float(np.asarray(fit.forecast(1))[0])
