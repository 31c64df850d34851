"""What reviewers and auditors read: SBOM, provenance, report, diff, bundle README."""
