"""What people say and do with the knowledge base: feedback, the curated question/answer
pairs made from it, and the audit log of reads."""
