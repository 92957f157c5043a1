"""Read and write images (NIfTI, DICOM, PNG/TIFF, NPY); every reader returns the array and its geometry."""
