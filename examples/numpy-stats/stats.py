"""Summary statistics with numpy: {"values": [1, 2, 3]} -> {"mean": 2.0, "std": 0.816…, …}."""

import numpy as np


def handler(event, context):
    values = event.get("values") if isinstance(event, dict) else event
    if not isinstance(values, list) or not values:
        raise ValueError('expected {"values": [numbers...]} with at least one number')
    a = np.asarray(values, dtype=np.float64)
    p50, p90, p99 = np.percentile(a, [50, 90, 99])
    return {
        "n": int(a.size),
        "mean": float(a.mean()),
        "std": float(a.std()),
        "min": float(a.min()),
        "max": float(a.max()),
        "p50": float(p50),
        "p90": float(p90),
        "p99": float(p99),
    }
