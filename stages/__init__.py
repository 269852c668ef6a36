"""The four DVC stage entry points (prepare, train, evaluate, calibrate): each reads params.yaml and
hands it to the library."""
