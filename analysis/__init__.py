"""analysis: numbers, figures and exports about ViT attention maps (DESIGN section 5).

Metric modules (`normalization`, `similarity`, `head_diversity`, `locality`, `rollout`, `cka`,
`localisation`) are pure functions on numpy arrays. `attribution` and `features` take a torch model.
`per_image`, `dataset` run models through `refiner.capture_attention`; `inputs` prepares images and
dataset splits for each model and `dataset_sources` runs `dataset.analyze_dataset` over them; `figures` and
`export` turn the results into plotly figures and files; `analyze_run` is one whole analysis run (what
``refiner analyze`` does; `refiner_cli` only parses its arguments) and `remake` re-makes one from a manifest.

Conventions: a model's maps for one image are ``(L, H, N, N)`` (rows are queries, columns keys) with
N = K + Gh * Gw tokens: K prefix tokens (CLS, distillation, registers) then the patches in row-major
grid order. K, the grid (Gh, Gw) and the patch size (ph, pw) in pixels are always passed explicitly.
This package never imports ``streamlit`` or ``app``.
"""
