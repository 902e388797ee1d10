"""Training dynamics: one loop (:mod:`mflib.dynamics.loop`) and, per model, the
engines that step it."""
