"""End-to-end encrypted record pipelines: producers seal records, brokers that read nothing carry
them (:mod:`tether.pipelines.brokers`), consumers open them (issue 17)."""
