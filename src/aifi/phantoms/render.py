"""Label grids to image values: tissue tables plus seeded noise, per modality.

A phantom's anatomy is a grid of tissue labels; what a scanner would show is a value per tissue
(Hounsfield units for CT, T1-weighted signal for MR) with the noise a real image has, so that
products cannot rely on perfectly flat regions.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

CT_NOISE_HU = 3.0
MR_NOISE = 15.0


def label_table(values: Mapping[int, float], default: float = 0.0) -> np.ndarray:
    """A 256-entry lookup from label to value, `default` for labels not listed."""
    table = np.full(256, default, dtype=np.float32)
    for label, value in values.items():
        table[int(label)] = value
    return table


def render_ct(
    labels: np.ndarray,
    hounsfield: Mapping[int, float],
    noise_hu: Mapping[int, float],
    rng: np.random.Generator,
) -> np.ndarray:
    """Hounsfield units: each tissue's value plus Gaussian noise (CT_NOISE_HU unless listed)."""
    mean = label_table(hounsfield)
    sigma = label_table(noise_hu, default=CT_NOISE_HU)
    return mean[labels] + rng.standard_normal(labels.shape, dtype=np.float32) * sigma[labels]


def render_t1(
    labels: np.ndarray, signal: Mapping[int, float], rng: np.random.Generator
) -> np.ndarray:
    """T1 magnitude signal: the tissue value plus complex Gaussian noise (Rician magnitude)."""
    mean = label_table(signal)
    real = mean[labels] + rng.standard_normal(labels.shape, dtype=np.float32) * MR_NOISE
    imaginary = rng.standard_normal(labels.shape, dtype=np.float32) * MR_NOISE
    return np.hypot(real, imaginary)
