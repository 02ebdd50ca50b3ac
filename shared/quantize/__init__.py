"""The quantize stage (``journey quantize``): the final model at every precision, measured side by side.

- ``quantize_config``: ``QuantizeConfig``, the stage's config, and the variant names it accepts.
- ``stage``: ``run_quantize(cfg)``: builds every variant, registers it, opens it through
  ``shared.serving.runtime.open_model`` (the path the generator serves it through), measures quality
  and speed, and registers the report.
- ``report``: the report's ``quantize.md`` / ``.json`` and plots.

This package is the stage only. The formats, quantized layers and the llama.cpp wrapper it builds
variants with are the library ``shared.quant``; the runtimes that open a saved model are
``shared.serving``. The stage sits above both (docs/architecture.md, Layers), which is why it is not
part of ``shared.quant``: serving imports quant, so a stage inside quant could not open its variants
the way serving does.

Modules are imported by name (``from shared.quantize.stage import run_quantize``); this package
re-exports nothing, so reading the config does not import torch.
"""
