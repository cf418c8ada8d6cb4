"""fishtune: FISH-Tuning (Fisher-information masks inside PEFT methods) and the harness that rebuilds its tables."""
