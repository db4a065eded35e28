"""D-TRAK-style data attribution on the 8×8 digits: teacher, features, the sampling-design study, report."""
