"""Hugging Face interop: import HF causal LMs as treadle runs, export treadle runs to HF."""
