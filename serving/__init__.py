"""HTTP front for Triton under the ModelArts custom-image contract."""
