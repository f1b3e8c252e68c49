"""RabbitMQ for celeriac (see :mod:`celeriac_amqp.plugin`)."""
