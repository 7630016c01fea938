"""fastbp's engine: backends that train, differentiate and evaluate networks described by
a ``Request``. The API layer (``fastbp.network`` and above) builds requests; nothing here
imports it."""
