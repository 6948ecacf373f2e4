"""Step-level sparse autoencoder (Yang et al., 2026, arXiv 2603.03031) and analyses (notebook 08).

``data`` turns reasoning traces into ``context <sep> step <eos>`` examples, ``model`` is the SAE
(encoder LM, sparse bottleneck, soft prefix, decoder LM, and the phase-2 Gaussian context head),
``training`` trains it (checkpoints, resume, DDP), ``probes`` reads step properties off its
latents, ``n2g`` mines token patterns that explain latents, ``voting`` weights sampled solutions
by probe-predicted step correctness, and ``distributed`` is the ``torchrun`` entry point.
"""
