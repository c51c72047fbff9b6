"""Names compared and checked the way the systems that own them do: directory DNs and SIDs."""
