"""The Faust worker: app wiring, the loop, alignment, watermarks, emitter."""
