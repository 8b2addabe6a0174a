"""Measurement tools (never imported by the product): the throughput benchmark (`cli`, with `model`,
`decode`, `e2e`, `layers`, `report`), the whole-process comparison with the old extractor (`vs_seed`,
`seed_baseline`) and the prepared GPU check (`gpu_check`). Entry modules: `python -m pipeline.benchmark`,
`python -m pipeline.gpu_check`.
"""
