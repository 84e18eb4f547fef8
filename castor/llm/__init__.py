"""Model calls as syscalls (issue 13). This branch holds only the rate limits: ``castor.llm.ratelimit`` and
``castor.llm.redis_limits``."""
