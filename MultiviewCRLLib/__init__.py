"""MultiviewCRL: content/style representations of paired T1w/T2w brain MRI."""
