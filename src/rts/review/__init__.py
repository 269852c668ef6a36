"""Candidate review after ``rts predict``: chips and an offline page (export), verdicts back into a
precision estimate, an ARTS file of confirmed RTS and hard-negative training tiles (import)."""
