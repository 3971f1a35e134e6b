"""dispo-wb: an ablation workbench for clipped policy-gradient RL on math."""
