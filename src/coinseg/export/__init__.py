"""Export of coinseg masks to other tools' formats (nnU-Net raw datasets, DICOM-SEG)."""
