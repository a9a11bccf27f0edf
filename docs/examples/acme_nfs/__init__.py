"""acme_nfs: the third-party NF package of docs/nfs.md, "Writing an NF"
(built and run by tests/test_nf_example.py)."""
