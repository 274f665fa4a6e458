"""Integrated-gradient attribution for spaCy text classifiers (the ``kx_attributor`` pipe).

integrated_gradients: the path integral, quadrature rules and baselines; classifier_bridge:
gradients through spaCy's own textcat head; attributor: the pipe; render: HTML pictures;
textcat / workflow / benchmark: what the project workflow trains, evaluates and times.
"""
