"""One module per `deploykit` verb; deploykit.cli imports every module here."""
