"""Training: ``fit`` (one gradient loop for every model), ``encode`` (frames -> latent store), and
the controller search. Import from the submodules (``dreamlab.train.fit``,
``dreamlab.train.encode``) so that importing one trainer does not pull in the others."""
