"""The editing layer: from an edit request to low-rank patches on the backbone's modules.

- :mod:`.editor`: ``EditRequest -> Edit`` (the MEND-style editors), batched patches for evaluation;
- :mod:`.mend`: the MEND network (gradient transforms, running norms, step sizes);
- :mod:`.schedule`: how a trained update is applied (passes, strength);
- :mod:`.keying`: which tokens build an update; subject spans;
- :mod:`.preconditioning`: key whitening with inverse key covariances;
- :mod:`.rome`: ROME (rank-one locate-and-edit) and its key covariances;
- :mod:`.finetune`: the constrained fine-tuning baseline;
- :mod:`.patches`: patch factors and the forward hooks that apply them per context;
- :mod:`.editors`: load an editor by name or checkpoint folder;
- :mod:`.checkpoint`: editor checkpoints (safetensors + JSON);
- :mod:`.merge`: patches written into a float copy of the model.

Nothing is imported here, so importing one module does not load the others.
"""
